//! The context CPT learns, as PEFT's CPT reads it: the demonstrations' token ids
//! (`cpt_token_ids`) and each token's type (`cpt_tokens_type_mask`).

use std::ops::Range;

use ftlab_sdk::{Error, Result};

/// A token's role in its demonstration: PEFT's type codes (its `cpt_tokens_type_mask` adds 4·i
/// in demonstration i, and never offsets 0, a separator).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `</s>` and the separators: never move.
    Separator = 0,
    /// The pattern's words before the input (a prefix every demonstration shares).
    InputTemplate = 1,
    /// The example's own words.
    Input = 2,
    /// The pattern's words between input and label (a suffix every demonstration shares).
    OutputTemplate = 3,
    /// The label word: never moves, and is a loss target.
    Label = 4,
}

/// The demonstrations laid out as one token sequence: `</s>`, then each demonstration followed
/// by the separator, each piece encoded on its own (as PEFT's CPT example tokenizes templates,
/// inputs and labels apart): PEFT's `cpt_token_ids`, and with the spans its type mask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// Token ids.
    pub ids: Vec<i64>,
    /// Each token's role.
    pub roles: Vec<Role>,
    /// Each demonstration's tokens (label included, separator excluded).
    pub spans: Vec<Range<usize>>,
}

impl Context {
    /// Lays out `demonstrations` (each one's ids, ending in its label word) with `bos` first and
    /// `separator` after each. `labels[i]` is demonstration i's label token: its last token must
    /// be it. The template is what every demonstration shares: its longest common prefix
    /// (input template) and suffix before the label (output template); with one demonstration
    /// every word counts as input.
    pub fn new(bos: i64, demonstrations: &[Vec<i64>], labels: &[i64], separator: &[i64]) -> Result<Self> {
        if demonstrations.is_empty() {
            return Err(Error::msg("cpt needs at least one demonstration"));
        }
        let mut bodies = Vec::with_capacity(demonstrations.len());
        for (i, (ids, &label)) in demonstrations.iter().zip(labels).enumerate() {
            match ids.split_last() {
                Some((&last, body)) if last == label => bodies.push(body),
                _ => {
                    return Err(Error::msg(format!(
                        "demonstration {i} does not end in its label word's token {label} (its tokens: {ids:?})"
                    )))
                }
            }
        }
        let shortest = bodies.iter().map(|b| b.len()).min().unwrap_or(0);
        let shared = |at: &dyn Fn(&[i64], usize) -> i64| {
            let n = (0..shortest).take_while(|&k| bodies.iter().all(|b| at(b, k) == at(bodies[0], k))).count();
            if bodies.len() > 1 {
                n
            } else {
                0
            }
        };
        let prefix = shared(&|b, k| b[k]);
        let suffix = shared(&|b, k| b[b.len() - 1 - k]).min(shortest - prefix);
        let mut context = Context { ids: vec![bos], roles: vec![Role::Separator], spans: Vec::new() };
        for (i, body) in bodies.iter().enumerate() {
            let start = context.ids.len();
            let roles = (0..body.len()).map(|k| match k {
                k if k < prefix => Role::InputTemplate,
                k if k >= body.len() - suffix => Role::OutputTemplate,
                _ => Role::Input,
            });
            for (&id, role) in body.iter().chain([&labels[i]]).zip(roles.chain([Role::Label])) {
                context.ids.push(id);
                context.roles.push(role);
            }
            context.spans.push(start..context.ids.len());
            for &id in separator {
                context.ids.push(id);
                context.roles.push(Role::Separator);
            }
        }
        Ok(context)
    }

    /// Positions of the label tokens, one per demonstration, in order.
    pub fn labels(&self) -> impl Iterator<Item = usize> + '_ {
        self.spans.iter().map(|s| s.end - 1)
    }

    /// Demonstration i's tokens and the separator after it: what a query that is that
    /// demonstration must not see (hiding it is removing it, positions included).
    pub fn block(&self, i: usize) -> Range<usize> {
        self.spans[i].start..self.spans.get(i + 1).map_or(self.ids.len(), |next| next.start)
    }

    /// Whether each token's offset trains: templates and inputs, not labels or separators.
    pub fn moves(&self) -> Vec<bool> {
        self.roles.iter().map(|r| matches!(r, Role::InputTemplate | Role::Input | Role::OutputTemplate)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_words_are_template_and_the_rest_input() {
        // "A <x> B C <label>" with x = 10 or 11 12: prefix [5], suffix [6, 7].
        let demos = [vec![5, 10, 6, 7, 100], vec![5, 11, 12, 6, 7, 101]];
        let context = Context::new(2, &demos, &[100, 101], &[9]).unwrap();
        assert_eq!(context.ids, [2, 5, 10, 6, 7, 100, 9, 5, 11, 12, 6, 7, 101, 9]);
        use Role::{Input as I, InputTemplate as T, Label as L, OutputTemplate as O, Separator as S};
        assert_eq!(context.roles, [S, T, I, O, O, L, S, T, I, I, O, O, L, S]);
        assert_eq!(context.spans, [1..6, 7..13]);
        assert_eq!([context.block(0), context.block(1)], [1..7, 7..14]);
        assert_eq!(context.labels().collect::<Vec<_>>(), [5, 12]);
        let moves = context.moves();
        assert_eq!(moves.iter().filter(|&&m| m).count(), 9);
        // One demonstration: no template can be told apart.
        let one = Context::new(2, &demos[..1], &[100], &[]).unwrap();
        assert_eq!(one.roles, [S, I, I, I, I, L]);
    }

    #[test]
    fn a_demonstration_must_end_in_its_label() {
        let err = Context::new(2, &[vec![5, 6, 100]], &[101], &[]).unwrap_err().to_string();
        assert!(err.contains("demonstration 0") && err.contains("101"), "{err}");
    }
}
