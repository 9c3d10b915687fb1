use std::ops::Range;

/// Why a policy file was refused. Messages are lowercase, name user input in backticks and
/// point at the line and column where the problem is.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Not TOML, or not the shape of a policy (unknown field, wrong type).
    #[error("{origin}:{line}:{column}: {message}")]
    Syntax {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// Well-formed, but wrong (unknown names, duplicates, bad addresses).
    #[error("{origin}:{line}:{column}: {message}")]
    Invalid {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
}

impl PolicyError {
    pub(crate) fn syntax(origin: &str, text: &str, err: &toml::de::Error) -> Self {
        let (line, column) = line_column(text, err.span().map_or(0, |span| span.start));
        Self::Syntax {
            origin: origin.to_owned(),
            line,
            column,
            message: err.message().trim_end().to_owned(),
        }
    }

    pub(crate) fn invalid(origin: &str, text: &str, span: Range<usize>, message: String) -> Self {
        let (line, column) = line_column(text, span.start);
        Self::Invalid {
            origin: origin.to_owned(),
            line,
            column,
            message,
        }
    }
}

/// 1-based line and column (in characters) of byte offset `at` in `text`.
pub fn line_column(text: &str, at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::line_column;

    #[test]
    fn line_column_counts_from_one() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        assert_eq!(line_column(text, text.find('=').unwrap()), (1, 3));
        let second_eq = text.rfind('=').unwrap();
        assert_eq!(line_column(text, second_eq), (2, 4));
        assert_eq!(line_column(text, 10_000), (3, 1));
    }
}
