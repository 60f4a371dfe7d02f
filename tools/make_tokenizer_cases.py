"""Reference token ids for the CLIP tokenizer tests.

Usage: python make_tokenizer_cases.py BPE_GZ OUT_JSON
BPE_GZ is bpe_simple_vocab_16e6.txt.gz (crates/pgp-core/assets, from the open_clip_torch wheel).
Builds transformers' CLIPTokenizer from the same vocabulary and merges that SDXL's tokenizer/
and tokenizer_2/ folders hold, and records what it gives for many strings: tokenizer 1 pads
with <|endoftext|> (49407), tokenizer 2 with "!" (id 0), both truncate to 77.
Needs transformers (tokenizers); CI never runs it.
"""
import gzip, json, sys

from transformers import CLIPTokenizer


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


lines = gzip.open(sys.argv[1]).read().decode("utf-8").split("\n")
merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
vocab = list(bytes_to_unicode().values())
vocab = vocab + [v + "</w>" for v in vocab]
vocab += ["".join(m) for m in merges]
vocab += ["<|startoftext|>", "<|endoftext|>"]
vocab = {t: i for i, t in enumerate(vocab)}
tok1 = CLIPTokenizer(vocab=vocab, merges=merges)
tok2 = CLIPTokenizer(vocab=vocab, merges=merges, pad_token="!")

texts = [
    "", " ", "a", "A photo of a cat", "a photo of a cat, highly detailed, 8k, masterpiece",
    "Hello, World!!!", "don't stop; it's fine -- we'll see what they've done", "I'M SHOUTING",
    "e-mail C++ $100.50 50% #hashtag @user", "12345 67 8.9", "2026-11-27T03:09:38Z",
    "café naïve résumé", "cafe\u0301 (decomposed)", "Straße İstanbul ΣΊΣΥΦΟΣ", "東京タワー 夜景",
    "مرحبا بالعالم", "emoji 🐱🚀 ok", "👩‍👩‍👧 family", "tabs\tand\nnew\r\nlines   spaces",
    "non\u00a0breaking\u3000ideographic\u2003em", "zero\u200bwidth", "fullwidth ＡＢＣ１２３",
    "<|endoftext|> inside", "a <|startoftext|>b", "&amp; &lt;html&gt;", "''quoted'' \"double\"",
    "under_score snake_case_name", "ALLCAPS lowercase MiXeD", "ﬁne ligature", "x" * 300,
    " ".join(["word"] * 80), " ".join(["photorealistic"] * 40), "a, " * 60, "1 " * 76,
    "the quick brown fox jumps over the lazy dog " * 3,
    "wow! amazing!!", "<|endoftext|>!", "!!!<|endoftext|>", "a\u0085b\u2028c\x0bd\x0ce",
    "4k uhd RTX4090 1/2 3:4 x2", "안녕하세요 세계", "สวัสดีครับ", "नमस्ते दुनिया", "שלום עולם",
    "\u0301\u0301 lone accents", "ǅungla ǈ Ǳ", "TITLE Case İi Iı", "٣٤٥ arabic digits ½ ²",
    "   leading and trailing   ", "!", "!" * 80, "hello<|endoftext|><|startoftext|>world",
    "a\u00adsoft\u00adhyphen", "math ∑∫√∞ ≠ ≤", "currency €£¥₹", "quotes ‘single’ “double” «guillemets»",
]
cases = []
for t in texts:
    full = tok1(t, truncation=False)["input_ids"]
    ids1 = tok1(t, padding="max_length", max_length=77, truncation=True)["input_ids"]
    ids2 = tok2(t, padding="max_length", max_length=77, truncation=True)["input_ids"]
    cases.append({"text": t, "ids_1": ids1, "ids_2": ids2, "truncated": len(full) > 77})
json.dump(cases, open(sys.argv[2], "w"), ensure_ascii=False, indent=0)
print(len(cases), "cases")
