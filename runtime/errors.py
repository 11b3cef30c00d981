"""One error hierarchy for textclassify; each subclass also inherits the matching built-in."""
from __future__ import annotations


class TextClassifyError(Exception):
    """Root of every error textclassify raises on purpose."""


class ConfigError(TextClassifyError, ValueError):
    """A configuration key has the wrong type, an impossible value, or is unknown."""


class DataError(TextClassifyError, ValueError):
    """Training or prediction input is malformed (names the row, column and value)."""


class NotFittedError(TextClassifyError, AttributeError):
    """A model was used before `fit`."""


def first_line(error: BaseException, limit: int | None = None) -> str:
    """The first line of an error's message (its type name when the message is empty), cut at `limit` chars."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line if limit is None or len(line) <= limit else line[:limit] + "..."


def one_line(error: BaseException | str, limit: int | None = None) -> str:
    """A whole message on one line (whitespace runs become one space; an empty exception gives its type name)."""
    text = " ".join(str(error).split()) or (type(error).__name__ if isinstance(error, BaseException) else "")
    return text if limit is None or len(text) <= limit else text[:limit] + "..."


def check_is_fitted(estimator: object, attribute: str) -> None:
    """Raise NotFittedError unless `fit` set `attribute` (to anything but False), with scikit-learn's message:
    "This AutoFusionClassifier instance is not fitted yet. Call 'fit' first." """
    if getattr(estimator, attribute, False) is False:
        raise NotFittedError(f"This {type(estimator).__name__} instance is not fitted yet. Call 'fit' first.")


class BundleError(TextClassifyError, ValueError):
    """A bundle is missing, tampered with, truncated or of an unknown format version."""


class ExportError(TextClassifyError, RuntimeError):
    """Export failed (for example the parity gate); nothing was written."""


class MissingDependencyError(TextClassifyError, ImportError):
    """An optional dependency is not installed; the message says which extra brings it."""


class LLMError(TextClassifyError, RuntimeError):
    """An LLM request failed for good. Keeps status code and request id, never the API key."""

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        model: str | None = None,
        text_index: int | None = None,
        status_code: int | None = None,
        request_id: str | None = None,
        last_response: str | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.model = model
        self.text_index = text_index
        self.status_code = status_code
        self.request_id = request_id
        self.last_response = last_response


class LLMResponseError(LLMError):
    """The server answered, but the answer could not be parsed into label scores."""


class CacheError(TextClassifyError, RuntimeError):
    """The LLM score cache file is unreadable or corrupt (names the file)."""


def require(module: str, extra: str) -> None:
    """Raise MissingDependencyError naming the extra that installs `module`."""
    raise MissingDependencyError(
        f"'{module}' is not installed; install textclassify[{extra}] (pip install 'textclassify[{extra}]')."
    )
