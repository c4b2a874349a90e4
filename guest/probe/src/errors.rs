//! A fixed-capacity list of short, static error strings (no allocator in the guest).

/// How many errors a list keeps; later ones are counted but dropped.
pub const MAX_ERRORS: usize = 16;

#[derive(Debug, Clone, Copy)]
pub struct ErrorList {
    items: [&'static str; MAX_ERRORS],
    len: usize,
    dropped: usize,
}

impl Default for ErrorList {
    fn default() -> Self {
        Self::new()
    }
}

impl ErrorList {
    pub const fn new() -> Self {
        Self {
            items: [""; MAX_ERRORS],
            len: 0,
            dropped: 0,
        }
    }

    /// Records `msg` once: a message already in the list is not repeated.
    pub fn push(&mut self, msg: &'static str) {
        if self.as_slice().contains(&msg) {
            return;
        }
        if self.len < MAX_ERRORS {
            self.items[self.len] = msg;
            self.len += 1;
        } else {
            self.dropped += 1;
        }
    }

    pub fn extend(&mut self, other: &ErrorList) {
        for e in other.as_slice() {
            self.push(e);
        }
        self.dropped += other.dropped;
    }

    pub fn as_slice(&self) -> &[&'static str] {
        &self.items[..self.len]
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0 && self.dropped == 0
    }

    pub fn dropped(&self) -> usize {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedups_and_caps() {
        let mut l = ErrorList::new();
        assert!(l.is_empty());
        l.push("a");
        l.push("a");
        assert_eq!(l.as_slice(), &["a"]);
        const MANY: [&str; 20] = [
            "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15",
            "16", "17", "18", "19",
        ];
        for m in MANY {
            l.push(m);
        }
        assert_eq!(l.as_slice().len(), MAX_ERRORS);
        assert_eq!(l.dropped(), 5);
    }
}
