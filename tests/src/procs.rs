//! The process tree from /proc, for stopping daemons that fork away from
//! the test (Dovecot's master daemonizes) and for noticing new workers.

/// (pid, parent pid) of every process.
fn parent_pairs() -> Vec<(i32, i32)> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // After the parenthesized command name: state, then ppid.
            let ppid = stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect()
}

/// The direct children of `pid`.
pub(crate) fn children(pid: i32) -> Vec<i32> {
    parent_pairs()
        .into_iter()
        .filter(|&(_, ppid)| ppid == pid)
        .map(|(p, _)| p)
        .collect()
}

/// Every process below `pid` in the tree.
pub(crate) fn descendants(pid: i32) -> Vec<i32> {
    let pairs = parent_pairs();
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(p, ppid) in &pairs {
            if ppid == parent && !out.contains(&p) {
                out.push(p);
                frontier.push(p);
            }
        }
    }
    out
}
