use super::*;

fn lines(dir: &Path) -> Vec<(Stream, String)> {
    read(dir, Filter::default())
        .unwrap()
        .0
        .into_iter()
        .map(|l| (l.stream, l.log))
        .collect()
}

#[test]
fn lines_are_split_per_stream_and_kept_in_order() {
    let d = tempfile::tempdir().unwrap();
    let mut w = LogWriter::open(d.path(), DEFAULT_MAX_BYTES).unwrap();
    w.write(Stream::Stdout, b"hel");
    w.write(Stream::Stderr, b"oops\n");
    w.write(Stream::Stdout, b"lo\nworld\npart");
    w.flush();
    assert_eq!(
        lines(d.path()),
        [
            (Stream::Stderr, "oops\n".to_string()),
            (Stream::Stdout, "hello\n".to_string()),
            (Stream::Stdout, "world\n".to_string()),
            (Stream::Stdout, "part".to_string()),
        ]
    );
    assert_eq!(w.notice(), None);
}

#[test]
fn long_lines_are_cut_and_files_rotate_at_the_cap() {
    let d = tempfile::tempdir().unwrap();
    let mut w = LogWriter::open(d.path(), 4096).unwrap();
    w.write(Stream::Stdout, &vec![b'x'; MAX_LINE + 10]);
    w.flush();
    let l = lines(d.path());
    assert_eq!(l.len(), 2);
    assert_eq!(l[0].1.len(), MAX_LINE);
    for i in 0..200 {
        w.write(Stream::Stdout, format!("line {i}\n").as_bytes());
    }
    w.flush();
    let cur = fs::metadata(d.path().join(LOG_FILE)).unwrap().len();
    let old = fs::metadata(d.path().join(LOG_FILE_OLD)).unwrap().len();
    assert!(cur <= 4096 && old <= 4096, "{cur} {old}");
    // The newest lines are kept, in order.
    let l = lines(d.path());
    assert_eq!(l.last().unwrap().1, "line 199\n");
    let n: Vec<usize> = l
        .iter()
        .filter_map(|(_, s)| s.strip_prefix("line ")?.trim().parse().ok())
        .collect();
    assert!(n.windows(2).all(|w| w[1] == w[0] + 1), "{n:?}");
}

#[test]
fn tail_since_and_follow() {
    let d = tempfile::tempdir().unwrap();
    let mut w = LogWriter::open(d.path(), 2048).unwrap();
    for i in 0..5 {
        w.write(Stream::Stdout, format!("{i}\n").as_bytes());
    }
    let tail = Filter {
        tail: Some(2),
        ..Filter::default()
    };
    let (got, mut follow) = read(d.path(), tail).unwrap();
    assert_eq!(
        got.iter().map(|l| l.log.as_str()).collect::<Vec<_>>(),
        ["3\n", "4\n"]
    );
    let future = Filter {
        since_nanos: Some(parse_rfc3339_nanos("2999-01-01T00:00:00Z").unwrap()),
        ..Filter::default()
    };
    assert!(read(d.path(), future).unwrap().0.is_empty());
    // Following across a rotation (one: about 29 lines fit the cap) loses
    // nothing.
    for i in 5..35 {
        w.write(Stream::Stderr, format!("{i}\n").as_bytes());
    }
    let more: Vec<String> = follow.poll().unwrap().into_iter().map(|l| l.log).collect();
    assert!(d.path().join(LOG_FILE_OLD).exists());
    assert_eq!(more.first().unwrap(), "5\n");
    assert_eq!(more.len(), 30);
    assert_eq!(more.last().unwrap(), "34\n");
    assert!(follow.poll().unwrap().is_empty());
}

#[test]
fn a_failed_write_stops_logging_with_one_notice() {
    let d = tempfile::tempdir().unwrap();
    let mut w = LogWriter::open(d.path(), 1024).unwrap();
    // Rotation cannot rename into a directory that is in the way.
    fs::create_dir(d.path().join(LOG_FILE_OLD)).unwrap();
    fs::write(d.path().join(LOG_FILE_OLD).join("x"), b"").unwrap();
    for _ in 0..100 {
        w.write(Stream::Stdout, b"some output\n");
    }
    let notice = w.notice().unwrap();
    assert!(notice.starts_with("logging stopped at "), "{notice}");
    assert!(notice.contains("the container goes on"), "{notice}");
    assert_eq!(w.notice(), None);
    w.write(Stream::Stdout, b"more\n");
}
