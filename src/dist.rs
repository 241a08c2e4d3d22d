//! Data-parallel training over MPI (the `mpi` cargo feature): `mpirun -np N xlsr train ...`
//! starts N processes (ranks), each on its own adapter, each taking its share of every batch;
//! their gradients are summed with `MPI_Allreduce` before the optimiser step, so N ranks with
//! `--batch-size B` train as one process with batch N x B. Without the feature, or when not
//! started by an MPI launcher, there is one rank and every call here is free.

use crate::error::Result;
use crate::Tensor;

/// This process's place among the data-parallel ranks.
pub struct Dist {
    rank: usize,
    size: usize,
    local_rank: usize,
    #[cfg(feature = "mpi")]
    world: Option<mpi::topology::SimpleCommunicator>,
    /// When the collective under way began (ms since `epoch`; 0: none), for the watchdog.
    #[cfg(feature = "mpi")]
    waiting_since: std::sync::Arc<std::sync::atomic::AtomicU64>,
    #[cfg(feature = "mpi")]
    epoch: std::time::Instant,
    /// Finalises MPI when dropped.
    #[cfg(feature = "mpi")]
    _universe: Option<mpi::environment::Universe>,
}

impl Dist {
    /// One process alone.
    pub fn single() -> Dist {
        Dist {
            rank: 0,
            size: 1,
            local_rank: 0,
            #[cfg(feature = "mpi")]
            world: None,
            #[cfg(feature = "mpi")]
            waiting_since: Default::default(),
            #[cfg(feature = "mpi")]
            epoch: std::time::Instant::now(),
            #[cfg(feature = "mpi")]
            _universe: None,
        }
    }

    /// The ranks of an MPI launch (`mpirun`, `srun`), or one rank when not launched so (or
    /// built without the `mpi` feature, which a launch with several ranks is told).
    pub fn init() -> Result<Dist> {
        let launched = launcher_size();
        #[cfg(feature = "mpi")]
        if launched.is_some() {
            use mpi::traits::Communicator;
            let universe = mpi::initialize().ok_or_else(|| {
                crate::error::Error::Usage("MPI was initialised already".to_string())
            })?;
            let world = universe.world();
            let local = world.split_shared(0).rank().try_into().unwrap_or_default();
            let dist = Dist {
                rank: world.rank() as usize,
                size: world.size() as usize,
                local_rank: local,
                world: Some(world),
                waiting_since: Default::default(),
                epoch: std::time::Instant::now(),
                _universe: Some(universe),
            };
            dist.watch();
            return Ok(dist);
        }
        if launched.is_some_and(|n| n > 1) && !cfg!(feature = "mpi") {
            return Err(crate::error::Error::Usage(
                "started by an MPI launcher with several ranks, but this xlsr was built without \
                 MPI: build it with `cargo build --release --features mpi`"
                    .to_string(),
            ));
        }
        Ok(Dist::single())
    }

    /// This rank, 0-based.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks.
    pub fn size(&self) -> usize {
        self.size
    }

    /// This rank's index among the ranks on its machine (which adapter it takes).
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// Rank 0 writes checkpoints, metrics and the final model, and prints progress.
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// Sums `data` over the ranks, in place (every rank gets the sum).
    pub fn sum(&self, data: &mut [f32]) {
        #[cfg(feature = "mpi")]
        if let Some(world) = &self.world {
            use mpi::collective::{CommunicatorCollectives, SystemOperation};
            let send = data.to_vec();
            self.waiting(|| world.all_reduce_into(&send[..], data, SystemOperation::sum()));
        }
        let _ = data;
    }

    /// Sums f32 tensors over the ranks through host memory (read back, summed, written).
    pub fn sum_tensors(&self, tensors: &[Tensor]) -> Result<()> {
        if self.size == 1 {
            return Ok(());
        }
        for t in tensors {
            let mut v = t.to_vec()?;
            self.sum(&mut v);
            t.write(&v)?;
        }
        Ok(())
    }

    /// Every rank's `data`, in rank order, on every rank.
    pub fn all_gather_bytes(&self, data: &[u8]) -> Vec<Vec<u8>> {
        #[cfg(feature = "mpi")]
        if let Some(world) = &self.world {
            use mpi::collective::CommunicatorCollectives;
            use mpi::datatype::PartitionMut;
            let mut counts = vec![0i32; self.size];
            self.waiting(|| world.all_gather_into(&(data.len() as i32), &mut counts[..]));
            let displs: Vec<i32> = counts
                .iter()
                .scan(0, |at, &c| {
                    let d = *at;
                    *at += c;
                    Some(d)
                })
                .collect();
            let total = counts.iter().sum::<i32>() as usize;
            let mut all = vec![0u8; total];
            let mut parts = PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
            self.waiting(|| world.all_gather_varcount_into(data, &mut parts));
            return counts
                .iter()
                .zip(&displs)
                .map(|(&c, &d)| all[d as usize..(d + c) as usize].to_vec())
                .collect();
        }
        vec![data.to_vec()]
    }

    /// Waits until every rank is here.
    pub fn barrier(&self) {
        #[cfg(feature = "mpi")]
        if let Some(world) = &self.world {
            use mpi::collective::CommunicatorCollectives;
            self.waiting(|| world.barrier());
        }
    }

    /// Runs a collective, marking the wait for the watchdog.
    #[cfg(feature = "mpi")]
    fn waiting<R>(&self, f: impl FnOnce() -> R) -> R {
        use std::sync::atomic::Ordering;
        let now = self.epoch.elapsed().as_millis() as u64;
        self.waiting_since.store(now.max(1), Ordering::Relaxed);
        let r = f();
        self.waiting_since.store(0, Ordering::Relaxed);
        r
    }

    /// With `XLSR_MPI_TIMEOUT=SECONDS`, a thread ends this process when one collective has
    /// waited that long (another rank hangs without dying: a stuck device, a stopped
    /// process); the launcher then stops the others. Off by default: rank 0 may keep the
    /// others waiting for minutes while it prepares a corpus or writes a checkpoint.
    #[cfg(feature = "mpi")]
    fn watch(&self) {
        use std::sync::atomic::Ordering;
        let Some(limit) = std::env::var("XLSR_MPI_TIMEOUT")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|&s| s > 0.0)
        else {
            return;
        };
        let (since, epoch, rank, size) =
            (self.waiting_since.clone(), self.epoch, self.rank, self.size);
        std::thread::spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_millis(250));
            let t = since.load(Ordering::Relaxed);
            let now = epoch.elapsed().as_millis() as u64;
            if t > 0 && (now.saturating_sub(t)) as f64 > limit * 1e3 {
                say(&format!(
                    "xlsr: rank {rank} of {size}: waited {limit} s (XLSR_MPI_TIMEOUT) for the \
                     other ranks; one of them hangs. Stopping."
                ));
                std::process::exit(3);
            }
        });
    }

    /// Stops every rank (after this one failed), so that none waits for it forever.
    pub fn abort(&self, code: i32) -> ! {
        #[cfg(feature = "mpi")]
        if let Some(world) = &self.world {
            use mpi::traits::Communicator;
            world.abort(code);
        }
        std::process::exit(code)
    }
}

/// The number of ranks an MPI launcher (Open MPI, MPICH's Hydra, PMIx as `srun` uses) says it
/// started, if one started this process.
fn launcher_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.parse().ok())
}

/// Prints one line to stderr in a single write. `eprintln!` writes each formatted piece on
/// its own, and mpirun, which forwards every rank's stderr, can print its abort notice between
/// two pieces of the line that says why.
pub fn say(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr()
        .lock()
        .write_all(format!("{line}\n").as_bytes());
}
