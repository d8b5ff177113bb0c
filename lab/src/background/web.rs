//! The web background: nginx serving a small static site on a loopback port, and `ab`
//! (apache2-utils) sending a burst of 20 requests over 2 connections every second, each request
//! its own TCP connection, as clients polling a service do.
use std::{path::Path, process::Stdio, time::Duration};

use anyhow::Context;

use super::{program, Running};

pub fn start(dir: &Path, running: &mut Running) -> anyhow::Result<()> {
    let nginx = program("nginx", "nginx")?;
    let ab = program("ab", "apache2-utils")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let www = dir.join("www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(
        www.join("index.html"),
        "<html><body>".to_owned() + &"feature-lab background ".repeat(200) + "</body></html>\n",
    )?;
    for t in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        std::fs::create_dir_all(dir.join(format!("tmp/{t}")))?;
    }
    let d = dir.display();
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 512; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/tmp/client_body;\n  proxy_temp_path {d}/tmp/proxy;\n  \
             fastcgi_temp_path {d}/tmp/fastcgi;\n  uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n  \
             server {{ listen 127.0.0.1:{port}; root {d}/www; }}\n}}\n"
        ),
    )?;
    let server = Running::command(running.pod.as_ref(), &nginx)
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nginx")?;
    running.children.push(server);
    // Up within a few seconds, or its log says why not.
    let up = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    if !up {
        let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
        anyhow::bail!("nginx did not start on 127.0.0.1:{port}: {log}");
    }
    let url = format!("http://127.0.0.1:{port}/");
    let stop = running.stop.clone();
    let pod = running.pod.clone();
    running.threads.push(std::thread::spawn(move || {
        while Running::pause(&stop, Duration::from_secs(1)) {
            let _ = Running::command(pod.as_ref(), &ab)
                .args(["-q", "-n", "20", "-c", "2", &url])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }));
    Ok(())
}
