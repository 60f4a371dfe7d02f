//! The CLIP BPE tokenizer of SDXL's `tokenizer/` and `tokenizer_2/`, giving exactly the ids of
//! transformers' `CLIPTokenizer`: special tokens matched in the raw text, NFC + whitespace
//! collapse + lowercase, CLIP's split regex, byte-level symbols, BPE with the `</w>` word end,
//! `<|startoftext|>` … `<|endoftext|>`, truncation and padding to 77.
//!
//! The vocabulary is OpenAI's `bpe_simple_vocab_16e6.txt.gz` (MIT, from the `open_clip_torch`
//! wheel), embedded in the library so that the browser build needs no extra download; the
//! 49,408-entry vocabulary is rebuilt from its merges as CLIP does.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, OnceLock};

use regex::Regex;
use unicode_normalization::UnicodeNormalization;

use crate::error::{Error, Result};

/// `<|startoftext|>`.
pub const BOS: u32 = 49406;
/// `<|endoftext|>`, also tokenizer 1's padding.
pub const EOS: u32 = 49407;
/// Sequence length of both SDXL text encoders.
pub const MAX_LEN: usize = 77;

const BPE_GZ: &[u8] = include_bytes!("../assets/bpe_simple_vocab_16e6.txt.gz");
const SPECIALS: [(&str, u32); 2] = [("<|startoftext|>", BOS), ("<|endoftext|>", EOS)];

/// The shared BPE tables.
struct Vocabulary {
    encoder: HashMap<String, u32>,
    decoder: Vec<String>,
    ranks: HashMap<(String, String), usize>,
    byte_encoder: [char; 256],
    split: Regex,
    whitespace: Regex,
}

/// GPT-2's reversible byte → printable character map.
fn bytes_to_unicode() -> [char; 256] {
    let mut printable: Vec<u32> = (u32::from(b'!')..=u32::from(b'~')).collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let mut map = ['\0'; 256];
    let mut extra = 0;
    for b in 0..256u32 {
        let c = if printable.contains(&b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        map[b as usize] = char::from_u32(c).expect("valid code point");
    }
    map
}

impl Vocabulary {
    fn load() -> Result<Self> {
        let mut text = String::new();
        flate2::read::GzDecoder::new(BPE_GZ)
            .read_to_string(&mut text)
            .map_err(|e| Error::config(format!("embedded CLIP vocabulary: {e}")))?;
        let merges: Vec<(String, String)> = text
            .split('\n')
            .skip(1)
            .take(49152 - 256 - 2)
            .map(|l| {
                let mut it = l.split(' ');
                (
                    it.next().unwrap_or_default().to_string(),
                    it.next().unwrap_or_default().to_string(),
                )
            })
            .collect();
        let byte_encoder = bytes_to_unicode();
        // Vocabulary order: bytes in map order (printable first), the same with `</w>`, merges.
        let mut order: Vec<u32> = (u32::from(b'!')..=u32::from(b'~')).collect();
        order.extend(0xA1..=0xAC);
        order.extend(0xAE..=0xFF);
        order.extend((0..256).filter(|b| !order.contains(b)).collect::<Vec<_>>());
        let mut tokens: Vec<String> = order
            .iter()
            .map(|&b| byte_encoder[b as usize].to_string())
            .collect();
        tokens.extend(
            order
                .iter()
                .map(|&b| format!("{}</w>", byte_encoder[b as usize]))
                .collect::<Vec<_>>(),
        );
        tokens.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        tokens.extend(SPECIALS.iter().map(|(s, _)| s.to_string()));
        let encoder = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let ranks = merges
            .into_iter()
            .enumerate()
            .map(|(i, m)| (m, i))
            .collect();
        Ok(Self {
            encoder,
            decoder: tokens,
            ranks,
            byte_encoder,
            split: Regex::new(r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+")
                .expect("valid regex"),
            whitespace: Regex::new(r"\s+").expect("valid regex"),
        })
    }

    fn shared() -> Result<Arc<Self>> {
        static VOCAB: OnceLock<std::result::Result<Arc<Vocabulary>, String>> = OnceLock::new();
        VOCAB
            .get_or_init(|| Vocabulary::load().map(Arc::new).map_err(|e| e.to_string()))
            .clone()
            .map_err(Error::Config)
    }

    /// BPE of one pre-token (already byte-mapped), appending ids to `out`.
    fn rank(&self, a: &str, b: &str) -> Option<usize> {
        self.ranks.get(&(a.to_string(), b.to_string())).copied()
    }

    /// Byte-pair encoding of one word: repeatedly merges the adjacent pair of lowest rank (the
    /// leftmost among equals), as CLIP's reference does, in O(n log n) with a heap of candidate
    /// pairs (a stale candidate is recognised by its rank no longer matching), so that a long
    /// word (a pasted URL or base64) costs milliseconds, not minutes.
    fn bpe(&self, word: &str, out: &mut Vec<u32>) {
        use std::collections::BinaryHeap;
        let mut symbols: Vec<String> = word.chars().map(String::from).collect();
        if let Some(last) = symbols.last_mut() {
            last.push_str("</w>");
        }
        let n = symbols.len();
        // Linked list over the symbols: `next[i]` (n: none), `prev[i]`, `alive[i]`.
        let mut next: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut alive = vec![true; n];
        let mut heap = BinaryHeap::new();
        for i in 0..n.saturating_sub(1) {
            if let Some(r) = self.rank(&symbols[i], &symbols[i + 1]) {
                heap.push(Reverse((r, i)));
            }
        }
        while let Some(Reverse((r, i))) = heap.pop() {
            let j = next[i];
            if !alive[i] || j >= n || self.rank(&symbols[i], &symbols[j]) != Some(r) {
                continue;
            }
            let right = std::mem::take(&mut symbols[j]);
            symbols[i].push_str(&right);
            alive[j] = false;
            next[i] = next[j];
            if next[i] < n {
                prev[next[i]] = i;
            }
            let p = prev[i];
            if p < n
                && let Some(r) = self.rank(&symbols[p], &symbols[i])
            {
                heap.push(Reverse((r, p)));
            }
            if next[i] < n
                && let Some(r) = self.rank(&symbols[i], &symbols[next[i]])
            {
                heap.push(Reverse((r, i)));
            }
        }
        out.extend(
            (0..n)
                .filter(|&i| alive[i])
                .map(|i| self.encoder.get(&symbols[i]).copied().unwrap_or(EOS)),
        );
    }

    /// Normalises, splits and BPE-encodes text without special tokens.
    fn encode_plain(&self, text: &str, out: &mut Vec<u32>) {
        let nfc: String = text.nfc().collect();
        // Per character, as the tokenizers library does (`str::to_lowercase` would turn a
        // word-final Σ into ς).
        let normal: String = self
            .whitespace
            .replace_all(&nfc, " ")
            .chars()
            .flat_map(char::to_lowercase)
            .collect();
        for m in self.split.find_iter(&normal) {
            let mapped: String = m
                .as_str()
                .bytes()
                .map(|b| self.byte_encoder[b as usize])
                .collect();
            self.bpe(&mapped, out);
        }
    }
}

/// What a prompt became.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoding {
    /// `MAX_LEN` ids: bos, content, eos, padding.
    pub ids: Vec<u32>,
    /// Whether content was cut to fit.
    pub truncated: bool,
}

/// One SDXL tokenizer: the shared vocabulary, a padding token and the special tokens matched
/// in the raw text.
#[derive(Clone)]
pub struct ClipTokenizer {
    vocab: Arc<Vocabulary>,
    pad: u32,
    specials: Vec<(String, u32)>,
}

impl ClipTokenizer {
    /// A tokenizer padding with the token `pad` (`<|endoftext|>` for `tokenizer/`, `!` for
    /// `tokenizer_2/`). Like transformers, the pad token is a special token: tokenizer 2 turns
    /// every `!` in a prompt into id 0 instead of BPE-encoding it.
    pub fn new(pad: &str) -> Result<Self> {
        let vocab = Vocabulary::shared()?;
        let pad_id = *vocab.encoder.get(pad).ok_or_else(|| {
            Error::config(format!("pad token `{pad}` is not in the CLIP vocabulary"))
        })?;
        let mut specials: Vec<(String, u32)> = SPECIALS
            .iter()
            .map(|(s, id)| (s.to_string(), *id))
            .collect();
        if !specials.iter().any(|(s, _)| s == pad) {
            specials.push((pad.to_string(), pad_id));
        }
        Ok(Self {
            vocab,
            pad: pad_id,
            specials,
        })
    }

    /// SDXL's two tokenizers.
    pub fn sdxl() -> Result<(Self, Self)> {
        Ok((Self::new("<|endoftext|>")?, Self::new("!")?))
    }

    /// The token ids of `text` without bos/eos, truncation or padding.
    pub fn content_ids(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            // Leftmost match, the longest at equal positions.
            let next = self
                .specials
                .iter()
                .filter_map(|(s, id)| rest.find(s.as_str()).map(|p| (p, Reverse(s.len()), *id)))
                .min();
            match next {
                Some((pos, Reverse(len), id)) => {
                    self.vocab.encode_plain(&rest[..pos], &mut out);
                    out.push(id);
                    rest = &rest[pos + len..];
                }
                None => {
                    self.vocab.encode_plain(rest, &mut out);
                    break;
                }
            }
        }
        out
    }

    /// The text of one token, `</w>` shown as a trailing space (for display).
    pub fn token_text(&self, id: u32) -> String {
        let Some(token) = self.vocab.decoder.get(id as usize) else {
            return format!("<{id}?>");
        };
        if SPECIALS.iter().any(|(s, _)| s == token) {
            return token.clone();
        }
        let (body, end) = match token.strip_suffix("</w>") {
            Some(b) => (b, " "),
            None => (token.as_str(), ""),
        };
        let bytes: Vec<u8> = body
            .chars()
            .filter_map(|c| self.vocab.byte_encoder.iter().position(|&m| m == c))
            .map(|b| b as u8)
            .collect();
        format!("{}{end}", String::from_utf8_lossy(&bytes))
    }

    /// What truncation to 77 tokens drops of `text`: the number of content tokens and the text
    /// of those past the 75 that fit; `None` when it fits.
    pub fn dropped(&self, text: &str) -> Option<(usize, String)> {
        let content = self.content_ids(text);
        let fit = MAX_LEN - 2;
        (content.len() > fit).then(|| {
            let tail: String = content[fit..]
                .iter()
                .map(|&id| self.token_text(id))
                .collect();
            (content.len(), tail.trim_end().to_string())
        })
    }

    /// `tokenizer(text, padding="max_length", max_length=77, truncation=True)`.
    pub fn encode(&self, text: &str) -> Encoding {
        let mut content = self.content_ids(text);
        let truncated = content.len() > MAX_LEN - 2;
        content.truncate(MAX_LEN - 2);
        let mut ids = Vec::with_capacity(MAX_LEN);
        ids.push(BOS);
        ids.extend(content);
        ids.push(EOS);
        ids.resize(MAX_LEN, self.pad);
        Encoding { ids, truncated }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Case {
        text: String,
        ids_1: Vec<u32>,
        ids_2: Vec<u32>,
        truncated: bool,
    }

    /// Reference ids from transformers' `CLIPTokenizer` (tools/make_tokenizer_cases.py).
    #[test]
    fn matches_transformers_on_every_reference_string() {
        let cases: Vec<Case> =
            serde_json::from_str(include_str!("../../../tests/tokenizer/cases.json")).unwrap();
        assert!(cases.len() > 30);
        let (t1, t2) = ClipTokenizer::sdxl().unwrap();
        let mut failures = Vec::new();
        for c in &cases {
            let (e1, e2) = (t1.encode(&c.text), t2.encode(&c.text));
            if e1.ids != c.ids_1 || e2.ids != c.ids_2 || e1.truncated != c.truncated {
                failures.push(format!(
                    "{:?}\n  got      {:?} / {:?}\n  expected {:?} / {:?} (truncated {} vs {})",
                    c.text, e1.ids, e2.ids, c.ids_1, c.ids_2, e1.truncated, c.truncated
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn vocabulary_has_clip_size_and_specials() {
        let v = Vocabulary::shared().unwrap();
        assert_eq!(v.encoder.len(), 49408);
        assert_eq!(v.encoder["<|startoftext|>"], BOS);
        assert_eq!(v.encoder["<|endoftext|>"], EOS);
        assert_eq!(v.encoder["!"], 0);
    }
}
