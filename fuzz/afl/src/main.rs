//! afl driver: `bunker-fuzz-afl <target>` fuzzes one target of `bunker_fuzz::TARGETS` in
//! afl's persistent mode. Built and run by `scripts/fuzz`.

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some(target) = bunker_fuzz::target(&name) else {
        let names: Vec<&str> = bunker_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
        eprintln!(
            "usage: bunker-fuzz-afl <target>; targets: {}",
            names.join(", ")
        );
        std::process::exit(2);
    };
    afl::fuzz!(|data: &[u8]| {
        target(data);
    });
}
