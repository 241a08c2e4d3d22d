//! Ctrl-C and SIGTERM (what a scheduler sends before it kills a job) during training: the first
//! lets the step finish, saves a checkpoint and stops the run; a second, or one outside the
//! training loop, ends the process at once, as if no handler were installed.

use crate::dist::Dist;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// The shared flags the signal handlers set (signal-hook wants them in `Arc`s).
struct Flags {
    /// True: a signal takes its default action (ends the process). False only while armed.
    default_action: Arc<AtomicBool>,
    /// The last signal that asked the loop to stop (0: none).
    requested: Arc<AtomicUsize>,
}

static FLAGS: OnceLock<Flags> = OnceLock::new();

/// The signals caught.
#[cfg(unix)]
const SIGNALS: [i32; 3] = [
    signal_hook::consts::SIGINT,
    signal_hook::consts::SIGTERM,
    signal_hook::consts::SIGHUP,
];
#[cfg(not(unix))]
const SIGNALS: [i32; 2] = [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM];

/// Installs the handlers (the command line does, once; a library user who does not keeps the
/// default behaviour). Until [`arm`] they act as the default does.
pub fn catch_signals() -> std::io::Result<()> {
    use signal_hook::flag;
    if FLAGS.get().is_some() {
        return Ok(());
    }
    let flags = Flags {
        default_action: Arc::new(AtomicBool::new(true)),
        requested: Arc::new(AtomicUsize::new(0)),
    };
    // A signal the parent set to be ignored (`nohup`, a script's `cmd &`) stays ignored.
    for sig in SIGNALS.into_iter().filter(|&s| !ignored(s)) {
        // In this order: end the process if not armed (or already asked once); else note
        // the signal, and make the next one end the process.
        flag::register_conditional_default(sig, flags.default_action.clone())?;
        flag::register_usize(sig, flags.requested.clone(), sig as usize)?;
        flag::register(sig, flags.default_action.clone())?;
    }
    // Said at once (the step, and an evaluation, may take a while): a user who sees nothing
    // presses Ctrl-C again and loses the steps.
    let requested = flags.requested.clone();
    std::thread::spawn(move || loop {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let sig = requested.load(Ordering::SeqCst);
        if sig != 0 {
            announce(sig as i32);
        }
    });
    let _ = FLAGS.set(flags);
    Ok(())
}

/// Whether the stop was said (by the watcher, or by the loop if the step ended first).
static ANNOUNCED: AtomicBool = AtomicBool::new(false);

/// Says once that the run stops after this step.
fn announce(signal: i32) {
    if !ANNOUNCED.swap(true, Ordering::SeqCst) {
        eprintln!(
            "\nxlsr: {}: stopping after this step, which is saved as a checkpoint (again to \
             stop at once, losing the steps since the last checkpoint)",
            name(signal)
        );
    }
}

/// Whether `sig` is ignored in this process (inherited from its parent).
#[cfg(unix)]
fn ignored(sig: i32) -> bool {
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a null new action only reads the current one into `old`, which we own.
    let ok = unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } == 0;
    ok && old.sa_sigaction == libc::SIG_IGN
}

#[cfg(not(unix))]
fn ignored(_sig: i32) -> bool {
    false
}

/// While the returned guard lives, a caught signal asks the loop to stop instead of ending
/// the process.
pub fn arm() -> Armed {
    if let Some(f) = FLAGS.get() {
        f.requested.store(0, Ordering::SeqCst);
        ANNOUNCED.store(false, Ordering::SeqCst);
        f.default_action.store(false, Ordering::SeqCst);
    }
    Armed
}

/// Disarms the handlers when dropped (the final save and evaluation end at once on a signal).
pub struct Armed;

impl Drop for Armed {
    fn drop(&mut self) {
        if let Some(f) = FLAGS.get() {
            f.default_action.store(true, Ordering::SeqCst);
        }
    }
}

/// The signal that asked the run to stop, agreed among the ranks (one rank's is enough, so
/// all stop after the same step).
pub fn requested(dist: &Dist) -> Option<i32> {
    let mine = FLAGS
        .get()
        .map_or(0, |f| f.requested.load(Ordering::SeqCst));
    if mine != 0 {
        announce(mine as i32);
    }
    if dist.size() == 1 {
        return (mine != 0).then_some(mine as i32);
    }
    let mut v = [mine as f32];
    dist.sum(&mut v);
    // A rank that got none stops as if by SIGTERM.
    (v[0] > 0.0).then_some(if mine != 0 { mine as i32 } else { 15 })
}

/// A signal's name, for messages.
pub fn name(signal: i32) -> String {
    match signal {
        2 => "SIGINT (Ctrl-C)".into(),
        15 => "SIGTERM".into(),
        1 => "SIGHUP".into(),
        n => format!("signal {n}"),
    }
}

/// Stops a run on `signal` after its step: reads the step's update and saves it as a
/// checkpoint (rank 0; unless `saved` says this step already was), and returns the error that
/// says where the run stands.
#[allow(clippy::too_many_arguments)]
pub(super) fn stop(
    signal: i32,
    saved: bool,
    step: &mut super::TrainStep,
    st: &mut super::TrainerState,
    watch: &mut super::report::Watch,
    model: &crate::model::Wav2Vec2ForCtc,
    vocab: &crate::data::Vocab,
    args: &super::TrainOptions,
    root: bool,
) -> crate::Error {
    let mut save = || -> crate::Result<String> {
        if !saved {
            if let Some(r) = step.finish()? {
                watch.check(&r, st.global_step, st, step.scaler.as_ref(), model)?;
            }
            st.grad_scaler = step.scaler.clone();
            if root {
                let limit = args.save_total_limit;
                super::state::save(&args.out, model, vocab, &step.opt, st, limit)?;
            }
        }
        let dir = args.out.join(format!("checkpoint-{}", st.global_step));
        Ok(format!("saved {}; continue with --resume", dir.display()))
    };
    let saved = save().unwrap_or_else(|e| {
        format!(
            "nothing saved ({e}){}",
            super::report::last_saved(&args.out)
        )
    });
    crate::Error::Interrupted {
        signal,
        step: st.global_step,
        saved,
    }
}
