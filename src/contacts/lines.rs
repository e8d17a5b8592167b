//! The one rule for line numbers in every contacts message: line 1 is the first line of the
//! file (the CSV header, say), and a line ends at `\r\n`, `\n` or a lone `\r`, so a file
//! written by Excel (CRLF), by a Unix editor (LF) or by old Mac software (CR) gives the same
//! numbers, the ones a text editor shows. A byte-order mark is not a line.
//!
//! Invariant: [`LineIndex::line_of`] is computed from the file's own bytes, never from a
//! parser's counter (the csv crate counts only `\n`, and takes a record's position before the
//! `\n` of the previous record's CRLF, which made every Excel file one line short).

/// Byte offset -> 1-based line, for one text (or the raw bytes before decoding).
#[derive(Debug, Clone)]
pub(crate) struct LineIndex {
    /// Byte offset where each line starts; `starts[0] == 0`.
    starts: Vec<usize>,
}

impl LineIndex {
    pub fn new(bytes: &[u8]) -> Self {
        let mut starts = vec![0];
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'\r' if bytes.get(i + 1) == Some(&b'\n') => {
                    starts.push(i + 2);
                    i += 2;
                    continue;
                }
                b'\r' | b'\n' => starts.push(i + 1),
                _ => {}
            }
            i += 1;
        }
        Self { starts }
    }

    /// The line holding byte `offset`. An offset on a line ending belongs to the line it ends.
    pub fn line_of(&self, offset: usize) -> usize {
        self.starts.partition_point(|&s| s <= offset).max(1)
    }

    /// The line of the first thing at or after `offset` that is not a line ending: where a
    /// record that a parser says starts at `offset` (perhaps on the ending before it, or
    /// before blank lines it skipped) really begins.
    pub fn content_line_at(&self, bytes: &[u8], offset: usize) -> usize {
        let skip = bytes
            .get(offset..)
            .unwrap_or_default()
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        self.line_of((offset + skip).min(bytes.len().saturating_sub(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lf_crlf_and_cr_files_number_lines_alike() {
        for eol in ["\n", "\r\n", "\r"] {
            let text = ["a", "b", "", "c"].join(eol);
            let idx = LineIndex::new(text.as_bytes());
            let c = text.find('c').unwrap();
            let b = text.find('b').unwrap();
            assert_eq!(idx.line_of(0), 1, "{eol:?}");
            assert_eq!(idx.line_of(b), 2, "{eol:?}");
            assert_eq!(idx.line_of(c), 4, "{eol:?}");
            // The ending of line 1 belongs to line 1; what follows it to the next.
            assert_eq!(idx.line_of(1), 1, "{eol:?}");
            assert_eq!(idx.content_line_at(text.as_bytes(), 1), 2, "{eol:?}");
            assert_eq!(
                idx.content_line_at(text.as_bytes(), b + 1),
                4,
                "{eol:?}: blank lines are skipped"
            );
        }
    }
}
