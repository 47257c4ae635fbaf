"""The SmolLM2 HF fixture is what llama.cpp's own file says it is."""
import numpy as np
import pytest

from realdata import python_docs_text, smollm2_gguf
from smollm2_fixture import smollm2_checkpoint, smollm2_tokenizer_json

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def llama_vocab_only():
    import llama_cpp

    return llama_cpp.Llama(model_path=str(smollm2_gguf()), vocab_only=True, verbose=False)


def test_tokenizer_json_encodes_like_llama_cpp(llama_vocab_only):
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(smollm2_tokenizer_json()))
    text = python_docs_text()[:20000] + " 12345 ünïcödé 日本語 <|im_start|>user\nhi<|im_end|>"
    ours = hf.encode(text, add_special_tokens=False).ids
    theirs = llama_vocab_only.tokenize(text.encode(), add_bos=False, special=True)
    assert ours == theirs


def test_checkpoint_logits_agree_with_llama_cpp():
    """Same weights, two runtimes: llama.cpp quantizes activations, so compare predictions, not bits."""
    import llama_cpp
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2_checkpoint(), dtype=torch.float32)
    llm = llama_cpp.Llama(model_path=str(smollm2_gguf()), n_ctx=256, logits_all=True, verbose=False)
    ids = llm.tokenize(python_docs_text()[:1500].encode(), add_bos=False)[:128]
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits[0].numpy()
    llm.eval(ids)
    theirs = np.asarray(llm.scores[: len(ids)], dtype=np.float32)
    same_top1 = (ours.argmax(-1) == theirs.argmax(-1)).mean()
    assert same_top1 > 0.9
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.995
