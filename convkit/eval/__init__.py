"""Evaluation: perplexity (llama.cpp's method), KL divergence from a base model, drift reports.

    perplexity.py  chunking, scoring and the PPL estimate of llama-perplexity
    kld.py         KL divergence statistics and the compact base-logits file
    drift.py       quantize to several types and measure each against the original
"""
