//! Service names: [`Name`].

/// A service's name: up to 23 bytes are stored inline, so naming a service
/// costs no allocation of its own, and copies are cheap.
pub(crate) type Name = smol_str::SmolStr;

/// A [`Name`] holding `text`. A short name, the common case, takes the
/// direct inline path: `Name::new` first looks for a run of newlines and
/// spaces it could share, about 15 instructions a name that a `tcc!`
/// block pays for each service on every run (BENCHMARKS.md, "The members,
/// smaller").
pub(crate) fn name(text: &str) -> Name {
    const INLINE: usize = 23;
    if text.len() <= INLINE {
        Name::new_inline(text)
    } else {
        Name::new(text)
    }
}

#[cfg(test)]
mod tests {
    /// Both sides of the inline limit: `Name::new_inline` panics past
    /// smol_str's own capacity, so the limit here must not exceed it.
    #[test]
    fn names_of_every_length_around_the_inline_limit_are_kept_whole() {
        for len in [0, 1, 22, 23, 24, 25, 100] {
            let text = "n".repeat(len);
            assert_eq!(super::name(&text), text);
        }
    }
}
