//! Text that reaches a person from someone else (messages, names, group titles, file names):
//! the characters that must not be shown as they are.

/// Whether `c` would act on a terminal or hide what text says if shown as it is: a control
/// character (escape sequences, line breaks, bells), a mark that reorders text
/// (bidirectional overrides, isolates and marks), or an invisible one (zero-width spaces and
/// joiners, the word joiner, the byte order mark). `tern`'s text output shows these as
/// escapes, and a name a user gives may not hold them (two names that look the same would
/// be two contacts).
pub fn is_hidden_or_control(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200b}'..='\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2060}'
                | '\u{2066}'..='\u{2069}'
                | '\u{feff}'
        )
}

#[cfg(test)]
mod tests {
    use super::is_hidden_or_control;

    #[test]
    fn controls_reordering_and_invisible_marks_are_caught() {
        for c in [
            '\u{1b}', '\n', '\u{7f}', '\u{9b}', '\u{202e}', '\u{2066}', '\u{200b}', '\u{feff}',
        ] {
            assert!(is_hidden_or_control(c), "{:x}", u32::from(c));
        }
        for c in ['a', 'é', '✓', ' ', '\u{a0}', '语'] {
            assert!(!is_hidden_or_control(c), "{:x}", u32::from(c));
        }
    }
}
