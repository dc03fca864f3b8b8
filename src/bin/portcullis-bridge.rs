//! `portcullis-bridge`: the entrypoint Portcullis gives a container server
//! whose stdio goes through FIFOs instead of the engine's attach stream.
//!
//! `portcullis-bridge IN OUT -- PROGRAM [ARGS...]` opens the FIFO `IN` as
//! standard input and `OUT` as standard output, then replaces itself with
//! `PROGRAM` (exec): the server runs as the container's process with the
//! same pid, user and limits, and only its stdio differs. Standard library
//! only, and linked statically (`scripts/build-test-image.sh` builds it), so
//! that it runs in any image, `FROM scratch` ones included.

use std::os::unix::process::CommandExt as _;
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(input), Some(output), Some("--"), Some(program)) = (
        args.first(),
        args.get(1),
        args.get(2).map(String::as_str),
        args.get(3),
    ) else {
        eprintln!("usage: portcullis-bridge IN OUT -- PROGRAM [ARGS...]");
        return ExitCode::from(2);
    };
    let stdin = match std::fs::File::open(input) {
        Ok(file) => file,
        Err(err) => {
            eprintln!("portcullis-bridge: cannot open {input}: {err}");
            return ExitCode::from(126);
        }
    };
    let stdout = match std::fs::OpenOptions::new().write(true).open(output) {
        Ok(file) => file,
        Err(err) => {
            eprintln!("portcullis-bridge: cannot open {output}: {err}");
            return ExitCode::from(126);
        }
    };
    // Only returns if the exec failed.
    let err = Command::new(program)
        .args(args.iter().skip(4))
        .stdin(stdin)
        .stdout(stdout)
        .exec();
    eprintln!("portcullis-bridge: cannot run {program}: {err}");
    ExitCode::from(127)
}
