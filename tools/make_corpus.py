#!/usr/bin/env python3
"""Make a tiny Common Voice-shaped Spanish corpus with espeak-ng, for tests and the demo.

    python3 tools/make_corpus.py [OUT_DIR]        # default: data/demo-es

Needs espeak-ng, sox and lame on PATH (Debian: apt-get install espeak-ng sox lame); plain
Python 3, no packages. The output is deterministic: the same tools give the same bytes.

Layout as a Common Voice release: train.tsv, dev.tsv, test.tsv with CV's columns, clips/*.mp3 at
48 kHz mono. Clips are 64 kbit/s CBR, the lowest rate whose frames hold the Xing/LAME header that
states the clip length (so a truncated file can be recognised).

Deliberately broken rows, one of each, that `xlsr prepare` must skip and count:
  - a row whose clip does not exist                        (train)
  - a truncated MP3 (first 40% of a good file's bytes)     (train)
  - a file of random bytes named .mp3                       (train)
  - a zero-byte clip                                        (dev)
  - a sentence that is empty once punctuation is removed    (train)
  - a malformed row (too few columns)                       (train)
  - a clip longer than 10 s                                 (dev)
  - a clip too short for its sentence (CTC can't fit it)    (train)
"""

import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile

HEADER = [
    "client_id", "path", "sentence", "up_votes", "down_votes",
    "age", "gender", "accents", "locale", "segment",
]

# Short everyday sentences; quotes and other punctuation exercise the text normalisation.
TRAIN = [
    "Hola, ¿cómo estás?",
    "El perro come pan.",
    "La casa es grande.",
    "Mañana vamos al mercado.",
    "Ella dijo \"hola\" y se fue.",
    "El sol sale temprano.",
    "Me gusta el café con leche.",
    "¿Dónde está la estación?",
    "Los niños juegan en el parque.",
    "Hace frío esta noche.",
    "Mi hermano vive en Madrid.",
    "El tren llega a las dos.",
    "Quiero un vaso de agua.",
    "La puerta está abierta.",
    "Él lee un libro nuevo.",
    "Hoy es un buen día.",
    "Las flores son rojas.",
    "¡Qué bonito es el mar!",
    "Necesito comprar pan.",
    "El gato duerme mucho.",
    "Vamos a la playa el sábado.",
    "Tengo dos hermanas.",
]
DEV = [
    "El libro está en la mesa.",
    "Ayer llovió todo el día.",
    "\"Vamos\", gritó Ana.",
    "La comida está lista.",
    "Mi madre cocina bien.",
]
TEST = [
    "El niño come una manzana.",
    "La noche es muy oscura.",
    "Quiero ir al cine.",
    "El agua está fría.",
    "Mi amigo tiene un perro.",
    "La ciudad es bonita.",
]
LONG = ("Había una vez un pequeño pueblo junto al río, donde todas las mañanas los vecinos "
        "se reunían en la plaza para hablar del tiempo, de la cosecha y de las noticias que "
        "llegaban desde la capital, mientras los niños corrían entre los árboles.")

VOICES = ["es", "es+f3", "es-419", "es-419+f2", "es+m3", "es-419+m1", "es+f4", "es-419+f5"]


def run(cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def speak(text, mp3, rng, tmp, speed=None):
    """espeak-ng (22.05 kHz) -> sox (48 kHz mono 16 bit, no dither) -> lame 64 kbit/s."""
    voice = rng.choice(VOICES)
    speed = speed or rng.randrange(135, 180, 5)
    pitch = rng.randrange(30, 75, 5)
    raw = os.path.join(tmp, "raw.wav")
    wav = os.path.join(tmp, "48k.wav")
    run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", raw, text])
    run(["sox", "-R", "-D", raw, "-r", "48000", "-c", "1", "-b", "16", wav])
    run(["lame", "--silent", "-b", "64", "-m", "m", "--resample", "48", wav, mp3])
    return voice


def row(name, sentence, voice):
    client = hashlib.sha256(voice.encode()).hexdigest()
    return [client, name, sentence, "2", "0", "", "", "", "es", ""]


def write_tsv(path, rows):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\t".join(HEADER) + "\n")
        for r in rows:
            f.write("\t".join(r) + "\n")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "data/demo-es"
    rng = random.Random(5)
    if os.path.isdir(out):
        shutil.rmtree(out)
    clips = os.path.join(out, "clips")
    os.makedirs(clips)
    counter = iter(range(100000, 200000))

    def clip_name():
        return f"common_voice_es_{next(counter)}.mp3"

    splits = {"train": [], "dev": [], "test": []}
    with tempfile.TemporaryDirectory() as tmp:
        for split, sentences in (("train", TRAIN), ("dev", DEV), ("test", TEST)):
            for s in sentences:
                name = clip_name()
                voice = speak(s, os.path.join(clips, name), rng, tmp)
                splits[split].append(row(name, s, voice))

        # Broken rows.
        splits["train"].append(row(clip_name(), "Este archivo no existe.", "es"))

        name = clip_name()
        good = os.path.join(tmp, "good.mp3")
        speak("Esta grabación quedó cortada por la mitad.", good, rng, tmp)
        data = open(good, "rb").read()
        open(os.path.join(clips, name), "wb").write(data[: len(data) * 2 // 5])
        splits["train"].append(row(name, "Esta grabación quedó cortada por la mitad.", "es"))

        name = clip_name()
        open(os.path.join(clips, name), "wb").write(bytes(rng.randrange(256) for _ in range(3000)))
        splits["train"].append(row(name, "Este archivo está dañado.", "es"))

        name = clip_name()
        open(os.path.join(clips, name), "wb").close()
        splits["dev"].append(row(name, "Este archivo está vacío.", "es"))

        name = clip_name()
        voice = speak("Punto.", os.path.join(clips, name), rng, tmp)
        splits["train"].append(row(name, "-- ... ?!", voice))

        splits["train"].append(["deadbeef", clip_name(), "Fila rota"])

        name = clip_name()
        voice = speak(LONG, os.path.join(clips, name), rng, tmp, speed=150)
        splits["dev"].append(row(name, LONG, voice))

        name = clip_name()
        voice = speak("Sí.", os.path.join(clips, name), rng, tmp, speed=300)
        splits["train"].append(row(
            name, "Esta frase es mucho más larga que lo que cabe en medio segundo de audio.", voice))

    for split, rows in splits.items():
        write_tsv(os.path.join(out, f"{split}.tsv"), rows)
    total = sum(os.path.getsize(os.path.join(clips, f)) for f in os.listdir(clips))
    print(f"{out}: {sum(len(r) for r in splits.values())} rows, {total / 1024:.0f} KiB of clips")


if __name__ == "__main__":
    main()
