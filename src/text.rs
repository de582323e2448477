//! The one rule for shortening text (pure): error-log columns, dead-letter headers and value
//! descriptions in error messages are cut to a number of characters with a tail saying how
//! many were cut, `... [truncated N chars]` (the form Kafnus's error log uses).

/// `s` cut to `max` characters plus `... [truncated N chars]`, or `s` unchanged when it fits.
pub fn truncate(s: String, max: usize) -> String {
    let count = s.chars().count();
    if count <= max {
        return s;
    }
    let kept: String = s.chars().take(max).collect();
    format!("{kept}... [truncated {} chars]", count - max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_marks_what_was_cut() {
        assert_eq!(truncate("abcdef".into(), 4), "abcd... [truncated 2 chars]");
        assert_eq!(truncate("abc".into(), 4), "abc");
        assert_eq!(truncate("ñññ".into(), 2), "ññ... [truncated 1 chars]");
    }
}
