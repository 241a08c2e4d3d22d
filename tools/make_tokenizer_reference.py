"""Write tests/fixtures/tokenizer.json: text normalisation, vocabulary building, encoding and
CTC decoding (with word offsets, `output_word_offsets=True`) as the seed notebook and Hugging
Face's Wav2Vec2CTCTokenizer do them.

    ../refenv/bin/python tools/make_tokenizer_reference.py

Seeded and re-runnable; tests/data.rs reads the JSON and never needs Python.
Cases:
  notebook   vocab built as the notebook does (regex removal + lower, sorted chars, " " -> "|",
             [UNK], [PAD]) with the tokenizer_config.json `xlsr prepare` writes
  base960h   the vocab and tokenizer_config of facebook/wav2vec2-base-960h (<pad> <s> </s> <unk>,
             uppercase letters), written out here since tests cannot download it
  lowercase  the notebook vocab with do_lower_case=True and HF's default bos/eos (<s> and </s>
             are appended as extra ids)
  saved      the notebook vocab with HF's default bos/eos, written by save_pretrained as a
             fine-tuned model's folder has it: vocab.json without <s> and </s>, which
             tokenizer_config.json's added_tokens_decoder places past the CTC head; the case
             carries every file save_pretrained wrote
"""

import json
import os
import random
import re
import tempfile

import transformers
from transformers import Wav2Vec2CTCTokenizer

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "tokenizer.json")
CHARS_TO_IGNORE = '[\\,\\?\\.\\!\\-\\;\\:\\"\\“\\%\\‘\\”\\�]'

SENTENCES = [
    "Hola, ¿cómo estás?",
    "Ella dijo \"hola\" y se fue.",
    "“Vamos”, gritó Ana — ¡ya!",
    "Él lee un libro; ‘nuevo’.",
    "100% seguro: sí.",
    "L'homme est là-bas.",
    "İstanbul'da IŞIK ve ılık su.",
    "Çok güzel, değil mi?",
    "  espacios   de   más  ",
    "ΟΔΟΣ καλή",
]


def normalise(s):
    return re.sub(CHARS_TO_IGNORE, "", s).lower()


def notebook_vocab(texts):
    chars = sorted(set("".join(texts)))
    vocab = {c: i for i, c in enumerate(chars)}
    vocab["|"] = vocab[" "]
    del vocab[" "]
    vocab["[UNK]"] = len(vocab)
    vocab["[PAD]"] = len(vocab)
    return vocab


NOTEBOOK_CONFIG = {
    "tokenizer_class": "Wav2Vec2CTCTokenizer",
    "processor_class": "Wav2Vec2Processor",
    "unk_token": "[UNK]",
    "pad_token": "[PAD]",
    "word_delimiter_token": "|",
    "bos_token": None,
    "eos_token": None,
    "do_lower_case": False,
    "replace_word_delimiter_char": " ",
    "clean_up_tokenization_spaces": False,
}

BASE960H_VOCAB = {
    "<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, "E": 5, "T": 6, "A": 7, "O": 8,
    "N": 9, "I": 10, "H": 11, "S": 12, "R": 13, "D": 14, "L": 15, "U": 16, "M": 17, "W": 18,
    "C": 19, "F": 20, "G": 21, "Y": 22, "P": 23, "B": 24, "V": 25, "K": 26, "'": 27, "X": 28,
    "J": 29, "Q": 30, "Z": 31,
}
BASE960H_CONFIG = {
    "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
    "do_lower_case": False, "return_attention_mask": False, "do_normalize": True,
}


def decoded(tok, ids):
    """ids, decode(ids), decode(ids, group_tokens=False), word offsets [word, start, end]."""
    words = tok.decode(ids, output_word_offsets=True).word_offsets
    words = [[w["word"], int(w["start_offset"]), int(w["end_offset"])] for w in words]
    return [ids, tok.decode(ids), tok.decode(ids, group_tokens=False), words]


def case(name, vocab, config, encode_texts, rng, saved=False):
    files = None
    with tempfile.TemporaryDirectory() as d:
        json.dump(vocab, open(os.path.join(d, "vocab.json"), "w", encoding="utf-8"))
        json.dump(config, open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8"))
        tok = Wav2Vec2CTCTokenizer.from_pretrained(d)
        if saved:
            out = os.path.join(d, "saved")
            tok.save_pretrained(out)
            files = {f: json.load(open(os.path.join(out, f), encoding="utf-8"))
                     for f in sorted(os.listdir(out)) if f.endswith(".json")}
            tok = Wav2Vec2CTCTokenizer.from_pretrained(out)
    n = len(tok)
    encode = [[t, tok(t).input_ids] for t in encode_texts]
    decode = []
    pad = tok.pad_token_id
    for k in range(40):
        length = rng.randrange(0, 25)
        # Mostly in-vocabulary ids with runs and blanks, as a CTC argmax gives; a few past the end.
        ids = []
        while len(ids) < length:
            r = rng.random()
            i = pad if r < 0.3 else rng.randrange(n + 2 if k % 10 == 9 else n)
            ids += [i] * rng.choice([1, 1, 2, 3])
        decode.append(decoded(tok, ids))
    # Word boundaries on purpose: delimiters at the ends and doubled, blanks inside repeats.
    d = tok.convert_tokens_to_ids(tok.word_delimiter_token)
    special = {pad, d, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id}
    a, b = [i for i in range(n) if i not in special][:2]
    for ids in [[d, a, a, pad, a, d, d, b, pad, d], [a, d, pad, b, b, d, a], [pad, pad], [d],
                [a, pad, pad, b], [a, a, d, d, pad, b, b, b]]:
        decode.append(decoded(tok, ids))
    result = {
        "name": name,
        "vocab": vocab,
        "tokenizer_config": config,
        "len": n,
        "pad_id": pad,
        "unk_id": tok.unk_token_id,
        "encode": encode,
        "decode": decode,
    }
    if files is not None:
        result["files"] = files
        # What a model fine-tuned with this tokenizer has as config.vocab_size.
        result["head"] = len(files["vocab.json"])
    return result


def main():
    rng = random.Random(5)
    normalised = [normalise(s) for s in SENTENCES]
    vocab = notebook_vocab(normalised)
    extra = [
        "", " ", "hola  que", " hola que ", "hola [UNK] que", "hola[PAD]que", "hola | que",
        "xyz ñ", "<s> hola </s>", "i̇stanbul", "HOLA",
    ]
    cases = [
        case("notebook", vocab, NOTEBOOK_CONFIG, normalised + extra, rng),
        case("base960h", BASE960H_VOCAB, BASE960H_CONFIG,
             ["HELLO WORLD", "HELLO  WORLD ", "hello", "IT'S <unk> A <s>TEST</s>", "A<pad>B",
              " <pad> X"], rng),
        case("lowercase", vocab, dict(NOTEBOOK_CONFIG, do_lower_case=True, bos_token="<s>",
                                       eos_token="</s>"),
             ["hola", "HOLA", "Hola <s> que"], rng),
        case("saved", vocab, dict(NOTEBOOK_CONFIG, bos_token="<s>", eos_token="</s>"),
             ["hola que", "<s> hola </s>", "xyz"], rng, saved=True),
    ]
    out = {
        "transformers": transformers.__version__,
        "chars_to_ignore_regex": CHARS_TO_IGNORE,
        "sentences": SENTENCES,
        "normalised": normalised,
        "cases": cases,
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {OUT}: {len(cases)} cases")


if __name__ == "__main__":
    main()
