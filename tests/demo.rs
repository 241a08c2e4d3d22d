//! The demo's tiny network learns: every op and its backward working together through the tape.

mod common;

#[test]
fn demo_loss_falls() {
    let (first, last) = xlsr::demo::run(&common::gpu(), 75).unwrap();
    assert!(last < 0.5 * first, "loss {first} -> {last}");
}
