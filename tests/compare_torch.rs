//! `tools/compare_torch.py --quick` end to end (every row at tiny shapes, xlsr on this machine's
//! adapter, PyTorch on the CPU), so the script works on its first run on a GPU machine. Runs
//! where a Python with torch and transformers is found (`XLSR_PYTHON`, else `python3`); says
//! why and passes elsewhere (CI installs no PyTorch).

use std::process::Command;

#[test]
fn compare_torch_quick_fills_every_row() {
    let python = std::env::var("XLSR_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_torch = Command::new(&python)
        .args(["-c", "import torch, transformers"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_torch {
        eprintln!(
            "{python} has no torch + transformers (set XLSR_PYTHON): compare_torch.py not run"
        );
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::env::temp_dir().join(format!("xlsr-compare-{}.md", std::process::id()));
    let run = Command::new(&python)
        .env("XLSR_TUNE", "0")
        .arg(format!("{root}/tools/compare_torch.py"))
        .args(["--quick", "--xlsr", env!("CARGO_BIN_EXE_xlsr"), "--out"])
        .arg(&out)
        .output()
        .expect("run compare_torch.py");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "compare_torch.py failed:\n{stderr}");
    let table = std::fs::read_to_string(&out).expect("the --out table");
    let _ = std::fs::remove_file(&out);
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| case") && !l.starts_with("| training"))
        .collect();
    // GEMM f32, GEMM f16 (where the adapter has f16), CTC, attention, one training step.
    assert!(rows.len() >= 4, "too few rows:\n{table}");
    for row in rows {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // cells[2] and cells[3]: xlsr ms and torch ms, both measured.
        for ms in &cells[2..4] {
            assert!(
                ms.parse::<f64>().is_ok_and(|v| v > 0.0),
                "unmeasured cell in {row}"
            );
        }
    }
}
