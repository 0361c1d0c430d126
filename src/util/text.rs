//! Small facts about characters that the query checks need.

/// Whether `c` prints nothing and separates nothing: Unicode format characters (general
/// category Cf: zero-width space and joiners, direction marks, the byte-order mark, soft
/// hyphen, tag characters), variation selectors and the invisible Hangul fillers. A query
/// made only of these and whitespace holds nothing.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c as u32,
        0x00AD
            | 0x034F
            | 0x061C
            | 0x115F..=0x1160
            | 0x17B4..=0x17B5
            | 0x180B..=0x180F
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x206F
            | 0x3164
            | 0xFE00..=0xFE0F
            | 0xFEFF
            | 0xFFA0
            | 0xFFF9..=0xFFFB
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0000..=0xE0FFF
    )
}

/// `c` as a user can name it in a message: the character and its code point
/// (`“😀” (U+1F600)`), or the code point alone for an invisible one.
pub fn describe_char(c: char) -> String {
    if is_invisible(c) || c.is_control() {
        format!("U+{:04X}", c as u32)
    } else {
        format!("“{c}” (U+{:04X})", c as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invisible_characters_are_told_apart_from_visible_ones() {
        for c in [
            '\u{200B}', '\u{200D}', '\u{FEFF}', '\u{2060}', '\u{00AD}', '\u{FE0F}',
        ] {
            assert!(is_invisible(c), "{:04X}", c as u32);
            assert!(
                !c.is_whitespace(),
                "{:04X} is whitespace, not format",
                c as u32
            );
        }
        for c in ['a', '7', '😀', '.', ' ', 'é', '中'] {
            assert!(!is_invisible(c), "{c}");
        }
        assert_eq!(describe_char('😀'), "“😀” (U+1F600)");
        assert_eq!(describe_char('\u{200B}'), "U+200B");
    }
}
