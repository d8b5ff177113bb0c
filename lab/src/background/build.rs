//! The build background: a generated C project of 40 small files, cleaned and rebuilt with
//! `make -j2` every 20 s, as a CI runner or a developer's node does: bursts of short-lived
//! compiler processes (cc, cc1, as, ld) and of file writes, then quiet.
use std::{fmt::Write, path::Path, process::Stdio, time::Duration};

use super::{program, Running};

const FILES: usize = 40;

pub fn start(dir: &Path, running: &mut Running) -> anyhow::Result<()> {
    let make = program("make", "make")?;
    program("cc", "gcc")?;
    let mut makefile = String::from("OBJS =");
    for i in 0..FILES {
        let _ = write!(makefile, " f{i}.o");
        std::fs::write(
            dir.join(format!("f{i}.c")),
            format!(
                "#include <stdio.h>\n#include <string.h>\nint f{i}(int x) {{ char b[64]; snprintf(b, sizeof b, \"%d\", x * {i}); return (int)strlen(b) + x; }}\n"
            ),
        )?;
    }
    std::fs::write(dir.join("main.c"), "int main(void) { return 0; }\n")?;
    makefile +=
        "\n\nprog: main.o $(OBJS)\n\tcc -o $@ $^\n\n%.o: %.c\n\tcc -O2 -c -o $@ $<\n\nclean:\n\trm -f *.o prog\n";
    std::fs::write(dir.join("Makefile"), makefile)?;
    let dir = dir.to_path_buf();
    let stop = running.stop.clone();
    let pod = running.pod.clone();
    running.threads.push(std::thread::spawn(move || loop {
        for target in ["clean", "prog"] {
            let _ = Running::command(pod.as_ref(), &make)
                .args(["-s", "-j2", "-C"])
                .arg(&dir)
                .arg(target)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if !Running::pause(&stop, Duration::from_secs(20)) {
            return;
        }
    }));
    Ok(())
}
