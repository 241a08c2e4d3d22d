//! External sorting for the n-gram estimator: records are sorted in memory up to a budget,
//! spilled to temporary files as sorted runs and read back merged, so that the counts of any
//! amount of text are estimated in a fixed amount of memory (KenLM's lmplz works the same way).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// One n-gram's record in every table and sort: its packed words, a count, flags, and two
/// reals whose meaning each stage states.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Entry {
    /// The packed words as two halves (a `u128` field would pad the record to 48 bytes).
    key: [u64; 2],
    /// A count: raw, adjusted, or continuations.
    pub count: u32,
    /// Bit 0: the n-gram is written (not pruned).
    pub flags: u32,
    /// Stage-dependent values (a probability, a discounted share, an interpolation weight).
    pub x: f64,
    /// See `x`.
    pub y: f64,
}

/// Bytes one [`Entry`] takes, in memory and on disk.
pub const ENTRY_BYTES: usize = std::mem::size_of::<Entry>();

impl Entry {
    /// A zeroed record of `key` with `count`.
    pub fn new(key: u128, count: u32) -> Entry {
        Entry {
            key: [key as u64, (key >> 64) as u64],
            count,
            ..Entry::default()
        }
    }

    /// The packed words.
    pub fn key(&self) -> u128 {
        self.key[0] as u128 | (self.key[1] as u128) << 64
    }
}

/// What a sort orders by: a function of the record (its key, or part of it).
pub type SortKey = Box<dyn Fn(&Entry) -> u128>;

/// Records in order, read from memory or merged from files; read errors end the stream.
pub type Stream = Box<dyn Iterator<Item = io::Result<Entry>>>;

/// A folder for the run files, deleted with everything in it when dropped.
pub struct Scratch {
    dir: PathBuf,
    next: std::cell::Cell<usize>,
}

impl Scratch {
    /// A fresh folder inside `parent` (whose killed builds' folders it deletes first).
    pub fn new(parent: &Path) -> io::Result<Rc<Scratch>> {
        sweep_dead(parent);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = parent.join(format!(
            ".xlsr-lm-{}-{nanos}-{}",
            std::process::id(),
            host()
        ));
        std::fs::create_dir(&dir)?;
        Ok(Rc::new(Scratch {
            dir,
            next: std::cell::Cell::new(0),
        }))
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self) -> PathBuf {
        let i = self.next.get();
        self.next.set(i + 1);
        self.dir.join(format!("{i}.run"))
    }
}

/// This machine's name, so that a scratch folder on a shared file system is only ever swept
/// by the machine whose process made it (Linux; elsewhere nothing is swept).
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or(String::new(), |h| h.trim().to_string())
}

/// Deletes the scratch folders in `parent` that killed builds of this machine left (their
/// process is gone), saying so: an interrupted build cannot delete its own.
fn sweep_dead(parent: &Path) {
    let host = host();
    if host.is_empty() {
        return;
    }
    for entry in std::fs::read_dir(parent).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(".xlsr-lm-") else {
            continue;
        };
        let mut parts = rest.splitn(3, '-');
        let (Some(pid), Some(_), Some(h)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let dead = pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists();
        if h == host && dead && std::fs::remove_dir_all(entry.path()).is_ok() {
            eprintln!(
                "note: deleted {}, the temporary files of an interrupted lm build",
                entry.path().display()
            );
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A file of records in some order, read as often as needed; deleted when dropped.
pub struct Table {
    path: PathBuf,
    /// Records in it.
    pub len: usize,
}

impl Table {
    /// Writes `records` to a new file of `scratch`.
    pub fn write(
        scratch: &Scratch,
        records: impl Iterator<Item = io::Result<Entry>>,
    ) -> io::Result<Table> {
        let mut w = TableWriter::new(scratch)?;
        for e in records {
            w.push(&e?)?;
        }
        w.finish()
    }

    /// Its records from the first.
    pub fn read(&self) -> io::Result<Stream> {
        let mut r = BufReader::with_capacity(1 << 16, File::open(&self.path)?);
        let mut left = self.len;
        Ok(Box::new(std::iter::from_fn(move || {
            if left == 0 {
                return None;
            }
            left -= 1;
            let mut e = Entry::default();
            Some(r.read_exact(bytemuck::bytes_of_mut(&mut e)).map(|_| e))
        })))
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        // Readers already open keep reading (POSIX); the space returns when they close.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A [`Table`] being written record by record.
pub struct TableWriter {
    w: BufWriter<File>,
    path: PathBuf,
    len: usize,
}

impl TableWriter {
    /// A new, empty file of `scratch`.
    pub fn new(scratch: &Scratch) -> io::Result<TableWriter> {
        let path = scratch.path();
        let w = BufWriter::with_capacity(1 << 16, File::create(&path)?);
        Ok(TableWriter { w, path, len: 0 })
    }

    /// Appends a record.
    pub fn push(&mut self, e: &Entry) -> io::Result<()> {
        self.len += 1;
        self.w.write_all(bytemuck::bytes_of(e))
    }

    /// The table written.
    pub fn finish(mut self) -> io::Result<Table> {
        self.w.flush()?;
        Ok(Table {
            path: std::mem::take(&mut self.path),
            len: self.len,
        })
    }
}

/// Run files merged at once at most (each open with its read buffer).
const FAN_IN: usize = 64;

/// Sorts records by `by`, in memory up to `cap` records, spilling sorted runs to files
/// beyond. With `combine`, records of equal sort keys become one whose count is their sum.
pub struct Sorter {
    scratch: Rc<Scratch>,
    by: Rc<SortKey>,
    combine: bool,
    cap: usize,
    buf: Vec<Entry>,
    runs: Vec<Table>,
}

impl Sorter {
    /// An empty sort.
    pub fn new(scratch: &Rc<Scratch>, cap: usize, combine: bool, by: SortKey) -> Sorter {
        Sorter {
            scratch: scratch.clone(),
            by: Rc::new(by),
            combine,
            cap: cap.max(1),
            buf: Vec::new(),
            runs: Vec::new(),
        }
    }

    /// Adds a record.
    pub fn push(&mut self, e: Entry) -> io::Result<()> {
        self.buf.push(e);
        if self.buf.len() >= self.cap {
            self.spill()?;
        }
        Ok(())
    }

    /// Sorts (and combines) the buffer in place.
    fn sort_buf(&mut self) {
        let by = &self.by;
        self.buf.sort_unstable_by_key(|e| by(e));
        if self.combine {
            self.buf.dedup_by(|later, kept| {
                let same = by(later) == by(kept);
                if same {
                    kept.count += later.count;
                }
                same
            });
        }
    }

    fn spill(&mut self) -> io::Result<()> {
        self.sort_buf();
        let buf = std::mem::take(&mut self.buf);
        self.runs
            .push(Table::write(&self.scratch, buf.into_iter().map(Ok))?);
        Ok(())
    }

    /// Files written so far.
    pub fn spilled(&self) -> usize {
        self.runs.len()
    }

    /// All records in order: from memory when they never outgrew it, else merged from the
    /// runs (first merged in groups of [`FAN_IN`] while there are more).
    pub fn finish(mut self) -> io::Result<Stream> {
        if self.runs.is_empty() {
            self.sort_buf();
            return Ok(Box::new(std::mem::take(&mut self.buf).into_iter().map(Ok)));
        }
        if !self.buf.is_empty() {
            self.spill()?;
        }
        while self.runs.len() > FAN_IN {
            let group: Vec<Table> = self.runs.drain(..FAN_IN).collect();
            let merged = merge(&group, self.by.clone(), self.combine)?;
            self.runs.push(Table::write(&self.scratch, merged)?);
        }
        merge(&self.runs, self.by.clone(), self.combine)
    }
}

/// The k-way merge of sorted runs (combining equal sort keys with `combine`).
fn merge(runs: &[Table], by: Rc<SortKey>, combine: bool) -> io::Result<Stream> {
    let mut readers: Vec<Stream> = runs.iter().map(Table::read).collect::<io::Result<_>>()?;
    let mut heads: Vec<Option<Entry>> = Vec::with_capacity(readers.len());
    let mut heap = BinaryHeap::new();
    for (i, r) in readers.iter_mut().enumerate() {
        let head = r.next().transpose()?;
        if let Some(e) = &head {
            heap.push(Reverse((by(e), i)));
        }
        heads.push(head);
    }
    // Takes run i's head and queues its next record.
    let mut take = move |i: usize, heap: &mut BinaryHeap<Reverse<(u128, usize)>>| {
        let e = heads[i].take().expect("a queued run has a head");
        heads[i] = readers[i].next().transpose()?;
        if let Some(n) = &heads[i] {
            heap.push(Reverse((by(n), i)));
        }
        Ok::<Entry, io::Error>(e)
    };
    Ok(Box::new(std::iter::from_fn(move || {
        let Reverse((k, i)) = heap.pop()?;
        let mut e = match take(i, &mut heap) {
            Ok(e) => e,
            Err(err) => return Some(Err(err)),
        };
        while combine && heap.peek().is_some_and(|Reverse((k2, _))| *k2 == k) {
            let Reverse((_, j)) = heap.pop().expect("peeked");
            match take(j, &mut heap) {
                Ok(other) => e.count += other.count,
                Err(err) => return Some(Err(err)),
            }
        }
        Some(Ok(e))
    })))
}

/// A sorted stream looked up in order: each call asks for a sort key not below the last one
/// asked for (a merge join).
pub struct Cursor {
    stream: Stream,
    by: SortKey,
    head: Option<Entry>,
}

impl Cursor {
    /// A cursor over `stream`, which is sorted by `by`.
    pub fn new(mut stream: Stream, by: SortKey) -> io::Result<Cursor> {
        let head = stream.next().transpose()?;
        Ok(Cursor { stream, by, head })
    }

    /// The record whose sort key is `key`, if any.
    pub fn find(&mut self, key: u128) -> io::Result<Option<Entry>> {
        while let Some(h) = &self.head {
            let k = (self.by)(h);
            if k >= key {
                return Ok((k == key).then_some(*h));
            }
            self.head = self.stream.next().transpose()?;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spilled or not, combined or not, the sort gives the same records in the same order.
    #[test]
    fn spilled_sort_equals_in_memory_sort() {
        let scratch = Scratch::new(&std::env::temp_dir()).unwrap();
        let keys: Vec<u128> = (0..5000u128)
            .map(|i| ((i * 7919 % 613) << 70) | (i % 3))
            .collect();
        for combine in [false, true] {
            let mut got = Vec::new();
            // cap 7 with 5000 records: 715 runs, merged in two levels.
            for cap in [usize::MAX, 7] {
                let mut s = Sorter::new(&scratch, cap, combine, Box::new(|e: &Entry| e.key()));
                for &k in &keys {
                    s.push(Entry::new(k, 1)).unwrap();
                }
                let spilled = s.spilled() > 0;
                assert_eq!(spilled, cap == 7);
                let out: Vec<(u128, u32)> = s
                    .finish()
                    .unwrap()
                    .map(|e| e.map(|e| (e.key(), e.count)).unwrap())
                    .collect();
                got.push(out);
            }
            assert_eq!(got[0], got[1]);
            let mut want: Vec<u128> = keys.clone();
            want.sort();
            if combine {
                want.dedup();
                let total: u32 = got[0].iter().map(|e| e.1).sum();
                assert_eq!(total as usize, keys.len());
            }
            assert_eq!(got[0].iter().map(|e| e.0).collect::<Vec<_>>(), want);
        }
    }
}
