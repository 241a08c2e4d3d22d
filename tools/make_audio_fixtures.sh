#!/usr/bin/env bash
# Writes the small FLAC and OGG Vorbis tones tests/data.rs decodes (needs sox; deterministic),
# and lame's decode of one corpus MP3 (needs lame).
set -euo pipefail
out="$(dirname "$0")/../tests/fixtures/audio"
mkdir -p "$out"
# 0.5 s of 440 Hz at amplitude 0.5 in both channels, 44.1 kHz 16-bit stereo FLAC.
sox -R -D -n -r 44100 -c 2 -b 16 "$out/tone440-44k-stereo.flac" synth 0.5 sine 440 gain -6.02
# 0.5 s of 1 kHz at amplitude 0.5, 48 kHz mono OGG Vorbis.
sox -R -D -n -r 48000 -c 1 "$out/tone1k-48k.ogg" synth 0.5 sine 1000 gain -6.02
# An independent decode of a corpus MP3 (lame skips the encoder delay and padding), which
# tests/data.rs compares with symphonia's.
lame --quiet --decode "$(dirname "$0")/../data/demo-es/clips/common_voice_es_100000.mp3" "$out/common_voice_es_100000.lame.wav"
