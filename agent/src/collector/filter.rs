//! Include/exclude lists of names (devices, mount points, interfaces) with `*`
//! wildcards. A name passes when it matches an include pattern (or the include list
//! is empty) and matches no exclude pattern.

/// A compiled include/exclude list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameFilter {
    include: Vec<String>,
    exclude: Vec<String>,
}

impl NameFilter {
    /// From the configured lists.
    pub fn new(include: &[String], exclude: &[String]) -> Self {
        Self {
            include: include.to_vec(),
            exclude: exclude.to_vec(),
        }
    }

    /// True when `name` should be collected.
    pub fn allows(&self, name: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|p| glob(p, name)))
            && !self.exclude.iter().any(|p| glob(p, name))
    }
}

/// Matches `name` against `pattern`, where `*` stands for any run of characters.
pub fn glob(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative matcher with backtracking to the last star.
    let (mut pi, mut ni) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("loop*", "loop0"));
        assert!(glob("*", ""));
        assert!(glob("/run/*/x", "/run/user/1000/x"));
        assert!(!glob("loop*", "vda"));
        assert!(glob("sd?", "sd?"));
        assert!(!glob("a*b", "acbd"));
    }

    #[test]
    fn include_then_exclude() {
        let f = NameFilter::new(&[], &["loop*".into(), "ram*".into()]);
        assert!(f.allows("vda"));
        assert!(!f.allows("loop3"));
        let f = NameFilter::new(&["eth*".into()], &["eth1".into()]);
        assert!(f.allows("eth0"));
        assert!(!f.allows("eth1"));
        assert!(!f.allows("lo"));
    }
}
