//! Ranked search over short documents (`portcullis__find` over the
//! catalogs' servers): BM25 with weighted fields, as Docker's `mcp-find`
//! ranks its catalog (a server's name counts four times, its title three,
//! its tools twice, its description once; k1 = 1.5, b = 0.75).
//!
//! Built once from the documents; a query reads the postings of its terms
//! only, so its cost grows with how many documents hold its words, not with
//! the catalog.

use std::collections::HashMap;

/// BM25's term-frequency saturation.
const K1: f32 = 1.5;
/// BM25's length normalisation.
const B: f32 = 0.75;
/// Query terms looked at, at most (the rest of a long query is ignored).
pub const MAX_QUERY_TERMS: usize = 32;

/// One field of a document and its weight.
pub struct Field<'a> {
    pub text: &'a str,
    pub weight: f32,
}

/// The index: each term's postings, each document's weighted length.
#[derive(Debug, Default)]
pub struct Index {
    /// Term → (document, weighted frequency).
    postings: HashMap<String, Vec<(u32, f32)>>,
    lengths: Vec<f32>,
    average: f32,
}

/// The words of `text`: lowercase runs of letters and digits (`get-pr` and
/// `get_pr` are `get` and `pr`).
pub fn terms(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
}

/// A catalog server as `portcullis__find` indexes it: Docker's weights
/// (name ×4, title ×3, each tool's name ×2, the description and each
/// tool's description ×1).
pub fn server_fields<'a>(
    name: &'a str,
    title: &'a str,
    description: &'a str,
    tools: &'a [(String, String)],
) -> Vec<Field<'a>> {
    let mut fields = vec![
        Field {
            text: name,
            weight: 4.0,
        },
        Field {
            text: title,
            weight: 3.0,
        },
        Field {
            text: description,
            weight: 1.0,
        },
    ];
    for (tool, about) in tools {
        fields.push(Field {
            text: tool,
            weight: 2.0,
        });
        fields.push(Field {
            text: about,
            weight: 1.0,
        });
    }
    fields
}

impl Index {
    /// Indexes `documents`, each a set of weighted fields, in order: a hit
    /// names its document by position.
    pub fn new<'a>(documents: impl IntoIterator<Item = Vec<Field<'a>>>) -> Self {
        let mut postings: HashMap<String, Vec<(u32, f32)>> = HashMap::new();
        let mut lengths = Vec::new();
        for (position, fields) in documents.into_iter().enumerate() {
            let document = u32::try_from(position).unwrap_or(u32::MAX);
            let mut counts: HashMap<String, f32> = HashMap::new();
            let mut length = 0.0;
            for field in fields {
                for term in terms(field.text) {
                    *counts.entry(term).or_default() += field.weight;
                    length += field.weight;
                }
            }
            for (term, count) in counts {
                postings.entry(term).or_default().push((document, count));
            }
            lengths.push(length);
        }
        let average = if lengths.is_empty() {
            0.0
        } else {
            lengths.iter().sum::<f32>() / lengths.len() as f32
        };
        Self {
            postings,
            lengths,
            average,
        }
    }

    /// How many documents it holds.
    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    /// The documents that hold a word of `query`, best first (ties by
    /// position), with their scores; those `keep` refuses are skipped, and
    /// at most `limit` are returned.
    pub fn search(
        &self,
        query: &str,
        limit: usize,
        mut keep: impl FnMut(usize) -> bool,
    ) -> Vec<(usize, f32)> {
        let count = self.lengths.len() as f32;
        let mut scores: HashMap<u32, f32> = HashMap::new();
        let mut seen: Vec<String> = Vec::new();
        for term in terms(query).take(MAX_QUERY_TERMS) {
            if seen.contains(&term) {
                continue;
            }
            let Some(postings) = self.postings.get(&term) else {
                seen.push(term);
                continue;
            };
            seen.push(term);
            let held = postings.len() as f32;
            let idf = (1.0 + (count - held + 0.5) / (held + 0.5)).ln();
            for &(document, frequency) in postings {
                let length = self.lengths.get(document as usize).copied().unwrap_or(0.0);
                let norm = if self.average > 0.0 {
                    1.0 - B + B * length / self.average
                } else {
                    1.0
                };
                let score = idf * frequency * (K1 + 1.0) / (frequency + K1 * norm);
                *scores.entry(document).or_default() += score;
            }
        }
        let mut ranked: Vec<(usize, f32)> = scores
            .into_iter()
            .map(|(document, score)| (document as usize, score))
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked
            .into_iter()
            .filter(|(document, _)| keep(*document))
            .take(limit)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(documents: &[(&str, &str, &str)]) -> Index {
        Index::new(
            documents
                .iter()
                .map(|(name, title, description)| server_fields(name, title, description, &[])),
        )
    }

    #[test]
    fn ranks_by_weighted_fields() {
        let index = index(&[
            ("fetch", "Fetch", "Reads web pages and returns markdown"),
            (
                "github",
                "GitHub",
                "Issues, pull requests and the web of repositories",
            ),
            ("time", "Time", "The time in any zone"),
        ]);
        let hits = index.search("github web", 10, |_| true);
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), vec![1, 0]);
        let hits = index.search("TIME zone", 10, |_| true);
        assert_eq!(hits.first().map(|h| h.0), Some(2));
        // A word in the name outweighs the same word in a description.
        let index = super::tests::index(&[
            ("notes", "Notes", "keeps a calendar of notes"),
            ("calendar", "Calendar", "events"),
        ]);
        assert_eq!(index.search("calendar", 10, |_| true)[0].0, 1);
    }

    #[test]
    fn unknown_words_keep_and_limit() {
        let index = index(&[("a-b", "", "x"), ("c", "", "x y"), ("d", "", "x")]);
        assert!(index.search("nothing here", 10, |_| true).is_empty());
        assert!(index.search("", 10, |_| true).is_empty());
        assert_eq!(index.search("x", 2, |_| true).len(), 2);
        let kept = index.search("x", 10, |document| document != 1);
        assert!(kept.iter().all(|hit| hit.0 != 1));
        assert_eq!(kept.len(), 2);
        // Names split into words: `a-b` is found by `b`.
        assert_eq!(index.search("b", 10, |_| true)[0].0, 0);
        // A repeated word counts once.
        assert_eq!(
            index.search("y y y y", 10, |_| true),
            index.search("y", 10, |_| true)
        );
    }
}
