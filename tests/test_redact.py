from nntune.redact import redact


def test_passwords_are_dropped_from_urls_in_strings_dicts_and_lists():
    assert redact("--storage postgresql://bob:s3cr%40t@10.0.0.1:5432/db: cannot open") == \
        "--storage postgresql://bob@10.0.0.1:5432/db: cannot open"
    nested = {"a": ["postgresql+psycopg://u:p@h/db", ("mysql://x:y@h/z",)], "n": 3, "s": "sqlite:////tmp/x.db"}
    assert redact(nested) == {"a": ["postgresql+psycopg://u@h/db", ("mysql://x@h/z",)], "n": 3,
                              "s": "sqlite:////tmp/x.db"}
    for kept in ("http://host:8080/x", "user@host", "a:b", "postgresql://bob@h/db"):
        assert redact(kept) == kept
