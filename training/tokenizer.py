"""A WordPiece tokenizer and BLIP processor built offline from a closed vocabulary.

BLIP's text side is BERT: WordPiece with [PAD] [UNK] [CLS] [SEP] [MASK], plus two
tokens BLIP adds: [DEC] (the decoder's BOS, swapped in for [CLS] when generating)
and [ENC] (the ITM encode token of the original code). Words missing from the
vocabulary split into characters, so build from every text any task uses.

    tok = build_tokenizer(["a red circle", "what colour is the square ?"])
    processor = build_processor(tok, image_size=64)
    processor.save_pretrained(out_dir)   # BlipProcessor.from_pretrained reloads it offline
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import BertTokenizerFast, BlipImageProcessorPil, BlipProcessor

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]"]


def _words(texts: Iterable[str]) -> list[str]:
    normalizer = normalizers.BertNormalizer(lowercase=True)
    splitter = pre_tokenizers.BertPreTokenizer()
    seen: dict[str, None] = {}
    for text in texts:
        for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)):
            seen.setdefault(word, None)
    return list(seen)


def build_tokenizer(texts: Iterable[str], model_max_length: int = 64) -> BertTokenizerFast:
    """Whole words of `texts` plus every single character, so nothing maps to [UNK]
    except characters never seen. Ids: specials first ([PAD]=0), then sorted words."""
    words = _words(texts)
    chars = sorted({c for w in words for c in w} | set("abcdefghijklmnopqrstuvwxyz0123456789?.,'"))
    vocab: dict[str, int] = {}
    for token in SPECIAL_TOKENS + sorted(set(words)) + chars + ["##" + c for c in chars]:
        vocab.setdefault(token, len(vocab))
    return _from_vocab(vocab, model_max_length)


def extend_tokenizer(tokenizer: BertTokenizerFast, texts: Iterable[str]) -> tuple[BertTokenizerFast, list[str]]:
    """(a tokenizer that also knows every word and character of `texts`, the tokens added).
    Existing tokens keep their ids; new ones are appended after them, in first-seen order, so
    a model's embedding rows stay valid and new rows go at the end (training.vocab_growth)."""
    vocab = tokenizer.get_vocab()
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise ValueError("the tokenizer's ids are not 0..V-1; cannot append to it")
    vocab = dict(sorted(vocab.items(), key=lambda kv: kv[1]))
    words = _words(texts)
    chars = [c for c in dict.fromkeys(c for w in words for c in w)]
    added = [t for t in dict.fromkeys(words + chars + ["##" + c for c in chars]) if t not in vocab]
    for token in added:
        vocab[token] = len(vocab)
    return _from_vocab(vocab, tokenizer.model_max_length), added


def _from_vocab(vocab: dict[str, int], model_max_length: int) -> BertTokenizerFast:
    core = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    core.decoder = decoders.WordPiece(prefix="##")
    tokenizer = BertTokenizerFast(
        tokenizer_object=core,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        bos_token="[DEC]",
        additional_special_tokens=["[ENC]"],
        model_max_length=model_max_length,
    )
    return tokenizer


def build_processor(tokenizer: BertTokenizerFast, image_size: int) -> BlipProcessor:
    image_processor = BlipImageProcessorPil(size={"height": image_size, "width": image_size})
    return BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)


def blip_text_config_ids(tokenizer: BertTokenizerFast) -> dict[str, int]:
    """Token ids a `BlipTextConfig` needs. transformers' BLIP ends generation at
    `sep_token_id`; `eos_token_id` is only the dummy second token of an empty prompt."""
    ids = tokenizer.convert_tokens_to_ids
    return {
        "vocab_size": len(tokenizer),
        "pad_token_id": ids("[PAD]"),
        "bos_token_id": ids("[DEC]"),
        "sep_token_id": ids("[SEP]"),
        "eos_token_id": ids("[SEP]"),
    }
