#!/usr/bin/env python3
"""A few hundred synthetic Spanish clips in Common Voice layout, for the longer learning run
of issue 6 (held-out WER/CER of a model trained from scratch). Not committed: regenerate it.

    python3 tools/make_synthetic_corpus.py OUT_DIR [N=320]
    xlsr demo --data OUT_DIR --clips 288 --steps 1500 --eval-steps 250 --out run-synth

Sentences are random subject + verb + object (+ adverbial) combinations, so the test split holds
new sentences made of words the training split has. espeak-ng speaks each with one of several
voices, speeds and pitches; clips are 16 kHz mono WAV (the pipeline reads WAV like MP3).
Deterministic for a given espeak-ng. Needs espeak-ng and sox.
"""
import os
import random
import subprocess
import sys

SUBJECTS = ["el perro", "la niña", "mi hermano", "el gato", "la maestra", "un hombre",
            "mi madre", "el médico", "la vecina", "nuestro amigo"]
VERBS = ["come", "ve", "busca", "quiere", "lleva", "compra", "tiene", "encuentra", "pide", "trae"]
OBJECTS = ["pan", "una manzana", "el libro", "la llave", "un coche", "agua", "flores",
           "la carta", "un regalo", "la mesa"]
ADVERBIALS = ["", "hoy", "mañana", "en casa", "por la tarde", "cada día", "con prisa"]
VOICES = ["es", "es-419"]


def main():
    out = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 320
    rng = random.Random(7)
    combos = [(s, v, o, a) for s in SUBJECTS for v in VERBS for o in OBJECTS for a in ADVERBIALS]
    rng.shuffle(combos)
    os.makedirs(f"{out}/clips", exist_ok=True)
    header = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tlocale\tsegment\n"
    rows = []
    for i, (s, v, o, a) in enumerate(combos[:n]):
        sentence = " ".join(w for w in (s, v, o, a) if w).capitalize() + "."
        name = f"synth_{i:05d}.wav"
        raw = f"{out}/clips/raw.wav"
        voice = rng.choice(VOICES)
        speed, pitch = rng.randint(140, 190), rng.randint(35, 65)
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", raw,
                        sentence], check=True)
        subprocess.run(["sox", "-v", "0.9", raw, "-r", "16000", "-c", "1", "-b", "16", f"{out}/clips/{name}"],
                       check=True)
        rows.append(f"synth\t{name}\t{sentence}\t2\t0\t\t\t\tes\t\n")
    os.remove(f"{out}/clips/raw.wav")
    n_test = max(1, n // 10)
    for split, part in [("train", rows[n_test:]), ("dev", []), ("test", rows[:n_test])]:
        with open(f"{out}/{split}.tsv", "w") as f:
            f.write(header + "".join(part))
    print(f"{len(rows) - n_test} training and {n_test} test clips in {out}")


if __name__ == "__main__":
    main()
