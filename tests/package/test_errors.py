"""`errors.py`: a library's exception quoted as 'Type: first line', cut at 200 characters."""

from iclgd_lens.errors import error_summary


def test_an_error_is_its_type_and_the_first_line_of_its_message():
    assert error_summary(OSError("no route to host\nretried 3 times")) == "OSError: no route to host"
    assert error_summary(ValueError("x" * 300)) == "ValueError: " + "x" * 200
    assert error_summary(KeyError()) == "KeyError"
    assert error_summary(RuntimeError("  \n ")) == "RuntimeError"
