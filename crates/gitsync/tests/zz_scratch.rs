#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::io::{BufRead, BufReader, Write};
#[test]
fn connect_auth_follows() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    depot_testkit::fixture::init_bare(&root.join("up.git")).unwrap();
    let server = depot_testkit::GitHttpServer::start(depot_testkit::GitServerOptions{root, basic_auth: None, listen: None}).unwrap();
    let location = format!("http://localhost:{}", server.addr().port());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut rl = String::new(); reader.read_line(&mut rl).unwrap();
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" { line.clear(); }
            let target = rl.split_whitespace().nth(1).unwrap_or("/");
            let _ = stream.write_all(format!("HTTP/1.1 302 Found\r\nLocation: {location}{target}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes());
        }
    });
    let repo = git2::Repository::init_bare(tmp.path().join("h.git")).unwrap();
    let mut remote = repo.remote_anonymous(&format!("{base}/up.git")).unwrap();
    let r = remote.connect_auth(git2::Direction::Fetch, None, None).map(|_| ());
    eprintln!("RESULT {:?} server requests {}", r, server.request_count());
}
