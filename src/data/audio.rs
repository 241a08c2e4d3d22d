//! Audio in: decode MP3/FLAC/OGG Vorbis/WAV to mono f32, resample to 16 kHz, normalise.

use super::DataError;
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use symphonia::core::codecs::audio::well_known::{CODEC_ID_MP1, CODEC_ID_MP2, CODEC_ID_MP3};
use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;

/// The sample rate wav2vec2 models take.
pub const SAMPLE_RATE: u32 = 16_000;

/// Decodes `path` and returns it as 16 kHz mono f32 (not normalised).
pub fn load(path: &Path) -> Result<Vec<f32>, DataError> {
    let (mono, rate) = decode(path)?;
    // A corrupt header's rate of a few Hz would resample to gigabytes.
    if !(1_000..=768_000).contains(&rate) {
        return Err(DataError::audio(
            path,
            format!("sample rate {rate} Hz is outside 1 kHz to 768 kHz (a corrupt header?)"),
        ));
    }
    // A float WAV can hold NaN or infinity; the model would turn it into NaN logits, blamed
    // on the weights.
    if let Some(i) = mono.iter().position(|s| !s.is_finite()) {
        let secs = i as f64 / rate as f64;
        return Err(DataError::audio(
            path,
            format!("sample {i} ({secs:.3} s) is {}: not audio", mono[i]),
        ));
    }
    resample(&mono, rate, SAMPLE_RATE).map_err(|msg| DataError::audio(path, msg))
}

/// Decodes `path` to mono f32 at its own sample rate: WAV through `hound` (falling back to
/// `symphonia` for WAV flavours hound refuses), everything else through `symphonia`.
/// Channels are averaged.
pub fn decode(path: &Path) -> Result<(Vec<f32>, u32), DataError> {
    if path.as_os_str() == "-" {
        return Err(DataError::audio(
            path,
            "audio from standard input is not supported: give a file",
        ));
    }
    let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
    if meta.is_dir() {
        return Err(DataError::audio(path, "is a folder, not an audio file"));
    }
    // A pipe reports 0 bytes (called empty), and a FIFO without a writer blocks forever.
    if !meta.is_file() {
        return Err(DataError::audio(
            path,
            "not a regular file (a pipe or device): give an audio file",
        ));
    }
    if meta.len() == 0 {
        return Err(DataError::EmptyAudio {
            path: path.into(),
            what: "0 bytes",
        });
    }
    // Read whole first: a read error (EIO on a failing disk or network share) is then said as
    // such, where the decoders would report it as an unknown format.
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let is_wav = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("wav"));
    if is_wav {
        if let Ok(out) = decode_wav(path, &bytes) {
            return Ok(out);
        }
    }
    decode_symphonia(path, bytes)
}

fn decode_wav(path: &Path, bytes: &[u8]) -> Result<(Vec<f32>, u32), DataError> {
    let err = |e: hound::Error| DataError::audio(path, e.to_string());
    let mut reader = hound::WavReader::new(std::io::Cursor::new(bytes)).map_err(err)?;
    let spec = reader.spec();
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader.samples::<f32>().collect::<Result<_, _>>(),
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample.clamp(1, 32) - 1)) as f32;
            reader
                .samples::<i32>()
                .map(|s| s.map(|s| s as f32 * scale))
                .collect::<Result<_, _>>()
        }
    }
    .map_err(err)?;
    Ok((
        downmix(&interleaved, spec.channels as usize),
        spec.sample_rate,
    ))
}

fn decode_symphonia(path: &Path, bytes: Vec<u8>) -> Result<(Vec<f32>, u32), DataError> {
    let err = |e: SymError| DataError::audio(path, e.to_string());
    let mss = MediaSourceStream::new(Box::new(std::io::Cursor::new(bytes)), Default::default());
    let mut hint = Hint::new();
    if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
        hint.with_extension(ext);
    }
    let mut format = symphonia::default::get_probe()
        .probe(
            &hint,
            mss,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(err)?;
    let track = format
        .default_track(TrackType::Audio)
        .ok_or_else(|| DataError::audio(path, "no audio track"))?;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or_else(|| DataError::audio(path, "no audio codec parameters"))?;
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(params, &AudioDecoderOptions::default())
        .map_err(err)?;
    let track_id = track.id;
    // A truncated file decodes cleanly up to where it stops: compare with the length the
    // container states. MPEG audio states it only in a Xing/LAME header (recognised by its
    // encoder delay); without one symphonia estimates it from the file size, which proves nothing.

    let is_mpeg = [CODEC_ID_MP1, CODEC_ID_MP2, CODEC_ID_MP3].contains(&params.codec);
    let expected = track
        .num_frames
        .filter(|_| !is_mpeg || track.delay.is_some());

    let mut mono = Vec::new();
    let mut rate = 0u32;
    let mut frame = Vec::new();
    let (mut packets, mut bad_packets) = (0usize, 0usize);
    loop {
        let packet = match format.next_packet() {
            Ok(Some(p)) => p,
            Ok(None) => break,
            // A stream that ends inside a frame is a truncated file: refuse it rather than
            // train on a clip whose transcript no longer matches.
            Err(e) => return Err(DataError::audio(path, format!("truncated or corrupt: {e}"))),
        };
        if packet.track_id != track_id {
            continue;
        }
        packets += 1;
        let buf = match decoder.decode(&packet) {
            Ok(buf) => buf,
            Err(SymError::DecodeError(_)) => {
                bad_packets += 1;
                continue;
            }
            Err(e) => return Err(DataError::audio(path, format!("corrupt audio: {e}"))),
        };
        let spec = buf.spec();
        rate = spec.rate();
        let channels = spec.channels().count().max(1);
        buf.copy_to_vec_interleaved(&mut frame);
        mono.extend(downmix(&frame, channels));
    }
    // Decoders resynchronise after a damaged frame; a few are tolerated (other decoders
    // conceal them too), a file that is mostly damage is not.
    if bad_packets * 50 > packets {
        let msg = format!("corrupt: {bad_packets} of {packets} packets failed to decode");
        return Err(DataError::audio(path, msg));
    }
    if rate == 0 || mono.is_empty() {
        return Err(DataError::EmptyAudio {
            path: path.into(),
            what: "no samples decoded",
        });
    }
    if let Some(n) = expected {
        if (mono.len() as u64) * 100 < n * 95 {
            let msg = format!("truncated: {} of {n} samples decoded", mono.len());
            return Err(DataError::audio(path, msg));
        }
    }
    Ok((mono, rate))
}

/// Averages interleaved channels into one.
fn downmix(interleaved: &[f32], channels: usize) -> Vec<f32> {
    if channels <= 1 {
        return interleaved.to_vec();
    }
    let inv = 1.0 / channels as f32;
    interleaved
        .chunks_exact(channels)
        .map(|f| f.iter().sum::<f32>() * inv)
        .collect()
}

thread_local! {
    // FFT plans are costly to build and every clip of a corpus has the same rate: keep one
    // resampler per (from, to) pair per thread.
    static RESAMPLERS: RefCell<HashMap<(u32, u32), Fft<f32>>> = RefCell::new(HashMap::new());
}

/// Resamples mono `x` from `from` Hz to `to` Hz with rubato's FFT resampler (band-limited,
/// Blackman-Harris windowed). The startup delay is trimmed, so output sample `i` lies at input
/// time `i * from / to`, and the output has exactly `round(len * to / from)` samples.
pub fn resample(x: &[f32], from: u32, to: u32) -> Result<Vec<f32>, String> {
    if from == to || x.is_empty() {
        return Ok(x.to_vec());
    }
    if from == 0 || to == 0 {
        return Err(format!("cannot resample {from} Hz -> {to} Hz"));
    }
    let want = (x.len() as f64 * to as f64 / from as f64).round() as usize;
    let input = InterleavedSlice::new(x, 1, x.len()).map_err(|e| e.to_string())?;
    // rubato's FFT block is `k * from/gcd` input samples, its filter centred on sample
    // `block / 2`. With an odd block that centre is half an input sample off the delay rubato
    // trims (`block_out / 2`), shifting the output by a fraction of a sample (0.18 samples for
    // 44.1 kHz). Pick k (about 1024 input samples per block) so both blocks are even.
    let g = gcd(from, to);
    let (min_in, min_out) = ((from / g) as usize, (to / g) as usize);
    let mut k = 1024usize.div_ceil(min_in);
    if (k * min_in) % 2 == 1 || (k * min_out) % 2 == 1 {
        k += 1;
    }
    let chunk = k * min_in;
    let mut out = RESAMPLERS.with(|cell| -> Result<Vec<f32>, String> {
        let mut map = cell.borrow_mut();
        let rs = match map.entry((from, to)) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(
                Fft::<f32>::new(from as usize, to as usize, chunk, 1, FixedSync::Both)
                    .map_err(|e| format!("resampler {from} -> {to} Hz: {e}"))?,
            ),
        };
        let out = rs
            .process_all(&input, x.len(), None)
            .map_err(|e| format!("resampling {from} -> {to} Hz: {e}"))?;
        Ok(out.take_data())
    })?;
    // process_all returns ceil(len * ratio) samples; the last one past round() is dropped.
    out.resize(want, 0.0);
    Ok(out)
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Normalises `x` in place to zero mean and unit variance as `Wav2Vec2FeatureExtractor` does:
/// `(x - mean) / sqrt(var + 1e-7)`, statistics in f64.
pub fn normalize(x: &mut [f32]) {
    if x.is_empty() {
        return;
    }
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let inv = 1.0 / (var + 1e-7).sqrt();
    for v in x.iter_mut() {
        *v = ((*v as f64 - mean) * inv) as f32;
    }
}

/// Decode throughput of [`bench_decode`].
#[derive(Clone, Debug)]
pub struct DecodeBench {
    /// Clips decoded per round.
    pub clips: usize,
    /// Audio seconds decoded per round.
    pub audio_seconds: f64,
    /// Audio seconds per wall second on one thread, decoding only (no resampling).
    pub decode_only: f64,
    /// Audio seconds per wall second on one thread (decode + resample).
    pub single_thread: f64,
    /// Audio seconds per wall second on all of rayon's threads.
    pub parallel: f64,
    /// Threads used for `parallel`.
    pub threads: usize,
}

impl std::fmt::Display for DecodeBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} clips ({:.1} s of audio): decode only {:.0} audio s/s; decode+resample {:.0} audio s/s on 1 thread, {:.0} on {} threads",
            self.clips, self.audio_seconds, self.decode_only, self.single_thread, self.parallel, self.threads
        )
    }
}

/// Measures [`load`] throughput over `files` (unreadable ones are left out), `rounds` times
/// each on one thread and in parallel, as `xlsr prepare` runs it.
pub fn bench_decode(files: &[std::path::PathBuf], rounds: usize) -> DecodeBench {
    use rayon::prelude::*;
    let good: Vec<&std::path::PathBuf> = files.iter().filter(|f| load(f).is_ok()).collect();
    let samples: usize = good.iter().map(|f| load(f).map_or(0, |x| x.len())).sum();
    let audio_seconds = samples as f64 / SAMPLE_RATE as f64;
    let rounds = rounds.max(1);
    let time = |f: &dyn Fn(&std::path::Path)| {
        let t = std::time::Instant::now();
        for _ in 0..rounds {
            good.iter().for_each(|p| f(p));
        }
        t.elapsed().as_secs_f64()
    };
    let decode_only = time(&|p| {
        let _ = std::hint::black_box(decode(p));
    });
    let single = time(&|p| {
        let _ = std::hint::black_box(load(p));
    });
    let t = std::time::Instant::now();
    for _ in 0..rounds {
        good.par_iter().for_each(|f| {
            let _ = std::hint::black_box(load(f));
        });
    }
    let parallel = t.elapsed().as_secs_f64();
    DecodeBench {
        clips: good.len(),
        audio_seconds,
        decode_only: audio_seconds * rounds as f64 / decode_only,
        single_thread: audio_seconds * rounds as f64 / single,
        parallel: audio_seconds * rounds as f64 / parallel,
        threads: rayon::current_num_threads(),
    }
}
