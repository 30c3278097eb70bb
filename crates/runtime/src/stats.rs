//! CPU and resident memory of process trees, from one scan of `/proc/<pid>/stat`.
//! Owns only the reading and summing; turning tick deltas into percentages is the
//! caller's job (with [`ticks_per_second`]).

use std::collections::HashMap;

/// Cumulative CPU time and current RSS of one process and all its descendants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeSample {
    /// utime + stime of the whole tree, in clock ticks.
    pub cpu_ticks: u64,
    pub rss_bytes: u64,
}

/// The fields of `/proc/<pid>/stat` this module uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    ppid: u32,
    cpu_ticks: u64,
    rss_pages: u64,
}

/// Parses `/proc/<pid>/stat`. `comm` (field 2) may hold spaces and parentheses, so the
/// fixed fields start after the *last* `)`.
fn parse_stat(content: &str) -> Option<ProcStat> {
    let rest = &content[content.rfind(')')? + 1..];
    // Field numbers as in proc(5): rest[0] is field 3 (state).
    let field = |n: usize| rest.split_ascii_whitespace().nth(n - 3);
    let num = |n: usize| field(n).and_then(|f| f.parse::<u64>().ok());
    Some(ProcStat {
        ppid: field(4)?.parse().ok()?,
        cpu_ticks: num(14)? + num(15)?,
        rss_pages: field(24)?.parse::<i64>().ok()?.max(0) as u64,
    })
}

/// Samples the trees rooted at each of `roots` with one scan of /proc. Roots that do not
/// exist (any more) are absent from the result.
pub fn sample_trees(roots: &[u32]) -> HashMap<u32, TreeSample> {
    let mut procs: HashMap<u32, ProcStat> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            // A process may vanish between readdir and read: just skip it.
            if let Ok(content) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                && let Some(stat) = parse_stat(&content)
            {
                procs.insert(pid, stat);
            }
        }
    }
    sum_trees(&procs, roots, page_size())
}

fn sum_trees(procs: &HashMap<u32, ProcStat>, roots: &[u32], page: u64) -> HashMap<u32, TreeSample> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (&pid, stat) in procs {
        children.entry(stat.ppid).or_default().push(pid);
    }
    let mut out = HashMap::new();
    for &root in roots {
        if !procs.contains_key(&root) {
            continue;
        }
        let mut sample = TreeSample::default();
        let mut stack = vec![root];
        // pid 0 is the kernel's parent of init and kthreadd; it is never a root here,
        // and parent links form a tree, so this walk ends.
        while let Some(pid) = stack.pop() {
            if let Some(stat) = procs.get(&pid) {
                sample.cpu_ticks += stat.cpu_ticks;
                sample.rss_bytes += stat.rss_pages * page;
            }
            if let Some(kids) = children.get(&pid) {
                stack.extend(kids.iter().copied().filter(|&k| k != 0));
            }
        }
        out.insert(root, sample);
    }
    out
}

fn page_size() -> u64 {
    use nix::unistd::{SysconfVar, sysconf};
    match sysconf(SysconfVar::PAGE_SIZE) {
        Ok(Some(n)) if n > 0 => n as u64,
        _ => 4096,
    }
}

/// Clock ticks per second (for turning tick deltas into CPU %).
pub fn ticks_per_second() -> u64 {
    use nix::unistd::{SysconfVar, sysconf};
    match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(n)) if n > 0 => n as u64,
        _ => 100,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_comm() {
        let line = "4242 (we ird) (x) S 17 4242 4242 0 -1 4194560 100 0 0 0 \
                    7 3 0 0 20 0 1 0 12345 1000000 250 18446744073709551615 0";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                ppid: 17,
                cpu_ticks: 10,
                rss_pages: 250
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 0"), None);
    }

    #[test]
    fn sums_a_tree_and_ignores_other_processes() {
        let p = |ppid, cpu_ticks, rss_pages| ProcStat {
            ppid,
            cpu_ticks,
            rss_pages,
        };
        let procs: HashMap<u32, ProcStat> = [
            (10, p(1, 5, 1)),
            (11, p(10, 7, 2)),
            (12, p(11, 1, 3)),
            (20, p(1, 100, 100)),
        ]
        .into_iter()
        .collect();
        let got = sum_trees(&procs, &[10, 11, 99], 4096);
        assert_eq!(
            got[&10],
            TreeSample {
                cpu_ticks: 13,
                rss_bytes: 6 * 4096
            }
        );
        assert_eq!(
            got[&11],
            TreeSample {
                cpu_ticks: 8,
                rss_bytes: 5 * 4096
            }
        );
        assert!(!got.contains_key(&99));
    }

    #[test]
    fn samples_this_process() {
        let me = std::process::id();
        let got = sample_trees(&[me]);
        assert!(got[&me].rss_bytes > 0);
        assert!(ticks_per_second() > 0);
    }
}
