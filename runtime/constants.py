"""The runtime's defaults and the bundle format's names (files, tensors, version): what the runtime reads.

Training's own defaults are in textclassify.train.constants, export's in textclassify.export.constants.
"""
from __future__ import annotations

DEFAULT_CACHE_DIR = "~/.cache/textclassify"

# LLM client
DEFAULT_TEMPERATURE = 0.0
DEFAULT_MAX_CONCURRENCY = 8
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_RETRIES = 5
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 20.0
PROMPT_VERSION = "v1"
SCORE_METHODS = ("auto", "logprobs", "json")
TOP_LOGPROBS = 20
SCORE_EPS = 1e-6  # floor for log(score) in temperature scaling, train and serve alike

# Bundle
BUNDLE_FORMAT_VERSION = 2  # format 2: component graphs (encoder, optional lexical), calibrator, fusion head
MANIFEST_FILE = "manifest.json"
ENCODER_FILE = "encoder.onnx"
ENCODER_INT8_FILE = "encoder.int8.onnx"
ENCODER_FP16_FILE = "encoder.fp16.onnx"
LEXICAL_FILE = "lexical.onnx"
FUSION_FILE = "fusion.onnx"
CALIBRATOR_FILE = "calibrator.onnx"
TOKENIZER_FILE = "tokenizer.json"
ENCODER_INPUTS = ("input_ids", "attention_mask")  # encoder.onnx: int64 [B, T] each
ENCODER_OUTPUT = "ml_logits"  # encoder.onnx: float32 [B, C]
LEXICAL_INPUT = "text"  # lexical.onnx: string [B]
LEXICAL_OUTPUT = "lexical_logits"  # lexical.onnx: float32 [B, C]
LLM_PRESENT = "llm_present"  # fusion.onnx: float32 [B, 1], 1 where the row has LLM scores, else 0
FUSED_OUTPUT = "fused_logits"  # fusion.onnx: float32 [B, C]
REEXPORT_COMMAND = "fusion-export --model MODEL_DIR --output BUNDLE_DIR"
DEFAULT_BATCH_SIZE = 32
# Texts per Bundle.predict call in batch scoring (fusion-predict's chunks, Ray Data's batches): progress
# granularity, enough rows for the LLM's concurrency, and a wide span to sort by length before padding.
PREDICT_CHUNK_ROWS = 512
DEFAULT_THRESHOLD = 0.5

# LLM-score calibration (train fits it, calibrator.onnx serves it)
CALIBRATOR_INPUT = "llm_scores_raw"  # calibrator.onnx input: raw LLM scores float32 [B, C]
CALIBRATOR_OUTPUT = "llm_scores"  # calibrator.onnx output: calibrated scores, an input of fusion.onnx

# LLM client (appended by the runtime.llm client)
RETRY_AFTER_MAX_S = 60.0  # a server's Retry-After is honoured up to this many seconds
# Answer length asked for with score_method logprobs. Only the first token with visible text is read, so 4 leaves
# room for 3 of whitespace, quotes or markdown before it; a model that rambles on costs 4 tokens, not 8
# (benchmarks/answer_tokens.py: SmolLM2 scored 1.12x and 1.35x the texts a second at 4 tokens).
LOGPROBS_MAX_TOKENS = 4

# Embedded local LLM (llm_provider "local"; appended by runtime.llm.local_server)
LOCAL_GGUF_ENV = "TEXTCLASSIFY_LOCAL_GGUF"  # overrides the default GGUF path
LOCAL_THREADS_ENV = "TEXTCLASSIFY_LOCAL_THREADS"  # llama.cpp threads of the embedded server (default: half the cores)
LOCAL_GGUF_DEFAULT = "data/models/SmolLM2-135M-Instruct.Q4_1.gguf"  # under the project root; `make demo` fetches it
LOCAL_SERVER_START_TIMEOUT_S = 120.0  # model load + first /health answer
LOCAL_SERVER_CTX = 2048  # context tokens per parallel slot
LOCAL_SERVER_PARALLEL = 4  # requests decoded together (continuous batching)

# Characters of a text sent to the LLM (the encoder truncates by tokens on its own): a 100,000-character
# text must not become a 100,000-character prompt. The cache key still hashes the whole text.
LLM_MAX_TEXT_CHARS = 8000

# What a text gets when the LLM's answer names no label (after retries): "raise" fails the call; "abstain"
# gives it no-opinion scores (1/C, or 0.5 per label for multi-label), counted in usage["abstained"] and not
# cached. Training and serving read the same setting, so the fusion MLP sees at serving what it trained on.
UNUSABLE_ANSWER_POLICIES = ("raise", "abstain")
