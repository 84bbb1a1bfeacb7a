"""How a library's exception is quoted inside the toolkit's one-line errors."""


def error_summary(error: BaseException) -> str:
    """'Type: first line of the message' (at most 200 characters of it), e.g. for an unreachable hub."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:200]}" if text else type(error).__name__
