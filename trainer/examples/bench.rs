//! Prints the trainer's benchmark figures as JSON lines (all-reduce ranks are threads here;
//! `kiln bench allreduce` runs them as processes):
//! `cargo run --release -p kiln-trainer --example bench [allreduce|train]`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    if what == "all" || what == "allreduce" {
        let r = kiln_trainer::bench::bench_allreduce(
            &[1 << 20, 16 << 20, 64 << 20],
            &[2, 4],
            &kiln_trainer::bench::threads_world,
        )?;
        println!("{}", serde_json::to_string(&r)?);
    }
    if what == "all" || what == "train" {
        for lazy in [false, true] {
            for workers in [1, 2] {
                let r = kiln_trainer::bench::bench_train(
                    workers,
                    300,
                    400_000,
                    kiln_trainer::device::ComputeDevice::Cpu,
                    lazy,
                )?;
                println!("{}", serde_json::to_string(&r)?);
            }
        }
    }
    Ok(())
}
