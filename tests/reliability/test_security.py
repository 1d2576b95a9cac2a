"""Security promises: identifiers checked before SQL, no secrets in the repo, safe model loading,
and writes confined to their configured root."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

from dolly_spark.ops import tables
from dolly_spark.ops.paths import PathOutsideRootError, ensure_within_root, safe_join
from dolly_spark.prep.prepare import PrepareConfig, run
from tests.reliability.helpers import REPO

BAD_IDENTIFIERS = [
    "main; DROP TABLE silver",
    "a'b",
    'a"b',
    "a`b",
    "has space",
    "tab\tname",
    "dotted.name",
    "dash-name",
    "",
    "caf\u00e9",
    "\u0455ilver",  # Cyrillic 's'
    "x)--",
    "a/*c*/",
]


@pytest.mark.parametrize("bad", BAD_IDENTIFIERS, ids=repr)
def test_bad_identifiers_are_rejected_everywhere(bad, tmp_path):
    with pytest.raises(tables.InvalidIdentifierError):
        tables.validate_identifier(bad)
    with pytest.raises(tables.InvalidIdentifierError):
        tables.TableNames(catalog=bad, schema="s")
    with pytest.raises(tables.InvalidIdentifierError):
        tables.TableNames(catalog="c", schema=bad)
    if bad:  # an empty prefix means "no prefix"
        with pytest.raises(tables.InvalidIdentifierError):
            tables.TableNames(root=str(tmp_path), prefix=bad)
    with pytest.raises(tables.InvalidIdentifierError):
        tables.TableNames(root=str(tmp_path), overrides={"silver": bad}).ref("silver")


class SqlSpy:
    """A stand-in session that records any use: validation must fail before the session is touched."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        self.calls.append(name)
        raise AssertionError(f"session used ({name}) before identifiers were validated")


@pytest.mark.parametrize(
    "field, value", [("catalog", "main; DROP TABLE x"), ("schema", "s`; --"), ("catalog", "my catalog")]
)
def test_prepare_rejects_bad_identifiers_before_any_sql(field, value):
    spy = SqlSpy()
    cfg = PrepareConfig(input=str(REPO / "tests" / "data" / "bad" / "crlf"), catalog="main", schema="dolly")
    setattr(cfg, field, value)
    with pytest.raises(tables.InvalidIdentifierError):
        run(cfg, spy)
    assert spy.calls == []


def test_identifier_with_trailing_newline_is_rejected():
    # re.match(r"^...$") accepts "silver\n": '$' also matches before a final newline
    with pytest.raises(tables.InvalidIdentifierError):
        tables.validate_identifier("silver\n")


# Quotes and backquotes that could leave SQL quotes, and characters Sail rewrites on disk ("/r/a b"
# to "/r/a%20b") or cuts the path at ("/r/a?b" to "/r/a").
ODD_ROOT_NAMES = ["a'b", "a`b", 'a"b', "a;b", "a b", "a#b", "a?b", "a%b", "a%zz", "caf\u00e9", "a[b]", "a*b",
                  "x'; DROP TABLE odd_silver; --"]  # fmt: skip


def _round_trip(spark, root: Path) -> tables.TableNames:
    names = tables.TableNames(root=str(root), prefix="odd_")
    df = spark.createDataFrame([(1, "a")], "id int, v string")
    tables.write_table(spark, df, names.silver)
    tables.write_table(spark, df, names.silver, mode="append")
    return names


@pytest.mark.parametrize("name", ODD_ROOT_NAMES, ids=repr)
def test_any_local_root_is_written_exactly_where_named_and_queried_by_sql(spark, tmp_path, name):
    root = tmp_path / name / "out"
    names = _round_trip(spark, root)
    assert spark.sql("SELECT count(*) AS n FROM odd_silver").collect()[0]["n"] == 2
    assert spark.sql(f"SELECT count(*) AS n FROM {names.silver.sql}").collect()[0]["n"] == 2
    assert tables.read_table(spark, names.silver, version=0).count() == 1
    assert (root / "tables" / "odd_silver" / "_delta_log").is_dir()
    assert [p.name for p in tmp_path.iterdir()] == [name]  # nothing beside it (no "a%20b" twin)
    assert tables.table_version(spark, names.silver) == 1


@pytest.mark.parametrize("ch", ["\\", "\t", "\n", "\x01", "\x7f", "%20", "%c3%a9"], ids=repr)
def test_a_backslash_control_character_or_escape_in_a_local_root_is_refused_in_one_line(tmp_path, ch):
    """delta-rs, which reads table versions, turns "\\" into "/" and "%20" into " " (even through a
    symlink) and rejects control characters in a path: refused up front, not half-written."""
    with pytest.raises(ValueError, match="a backslash, a control character") as err:
        tables.TableNames(root=str(tmp_path / f"a{ch}b"))
    assert "\n" not in str(err.value)


def test_the_round_trip_check_catches_an_engine_rewriting_the_path(spark, tmp_path, monkeypatch):
    """Handing Sail the path as is (no ``engine_location``) writes to "a%20b": the check above fails."""
    monkeypatch.setattr(tables, "engine_location", lambda path: path)
    with pytest.raises(Exception, match="does not exist"):  # the version read at the named path
        _round_trip(spark, tmp_path / "a b")
    assert not (tmp_path / "a b" / "tables" / "odd_silver" / "_delta_log").is_dir()
    assert (tmp_path / "a%20b" / "tables" / "odd_silver" / "_delta_log").is_dir()


@pytest.mark.parametrize("text", ["a'b", "a\\'b", "a\\b", "'; DROP TABLE t; --", 'é`"', "\\"], ids=repr)
def test_sql_quoting_round_trips_on_the_engine(spark, text):
    assert spark.sql(f"SELECT {tables.sql_string(text)} AS s").collect()[0]["s"] == text
    assert spark.sql(f"SELECT 1 AS {tables.quote_path(text)}").columns == [text]


def test_merge_into_a_table_under_an_odd_root(spark, tmp_path):
    from dolly_spark.serve import merge

    names = tables.TableNames(root=str(tmp_path / "my root é `q'"), prefix="odd_")
    target = names.predictions
    rows = spark.createDataFrame([("k1", "1", "x"), ("k2", "1", "y")], "row_key string, model_version string, g string")
    merge.ensure_table(spark, rows, target)
    staged = merge.staging_ref(target, "r1")
    tables.write_table(spark, rows, staged)
    assert merge.merge_new_rows(spark, staged, target) == 2
    assert merge.merge_new_rows(spark, staged, target) == 0  # idempotent
    merge.drop_staging(spark, staged)
    assert tables.read_table(spark, target).count() == 2 and not Path(staged.path).exists()


def test_root_with_safe_punctuation_round_trips(spark, tmp_path):
    names = tables.TableNames(root=str(tmp_path / "team-a_v1.2+x"), prefix="sec_")
    df = spark.createDataFrame([(1, "a")], "id int, v string")
    tables.write_table(spark, df, names.silver)
    assert spark.sql("SELECT count(*) AS n FROM sec_silver").collect()[0]["n"] == 1
    assert (Path(names.silver.path) / "_delta_log").is_dir()  # written exactly where named
    assert tables.engine_location(names.silver.path) == names.silver.path  # no alias needed


# --- secrets -------------------------------------------------------------------------------

TOKEN_PATTERNS = {
    "databricks_pat": r"\bdapi[0-9a-f]{32}\b",
    "github_token": r"\b(?:ghp|gho|ghs|ghu|ghr)_[A-Za-z0-9]{36}\b|\bgithub_pat_[A-Za-z0-9_]{40,}",
    "huggingface_token": r"\bhf_[A-Za-z0-9]{34,}\b",
    "aws_access_key": r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    "slack_token": r"\bxox[abpr]-[A-Za-z0-9-]{10,}",
    "openai_key": r"\bsk-[A-Za-z0-9_-]{32,}",
    "private_key": r"-----BEGIN (?:RSA |EC |OPENSSH |DSA )?PRIVATE KEY-----",
    "azure_storage_key": r"AccountKey=[A-Za-z0-9+/]{40,}={0,2}",
    "jwt": r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}",
}
# A secret-named key set to a literal in YAML/JSON/TOML/INI/.env. Allowed values: empty, env or
# bundle variable references, Databricks secret references.
SECRET_ASSIGNMENT = re.compile(
    r"""(?im)^[\s{,]*["']?[\w.-]*(?:token|password|passwd|secret|api[_-]?key|client[_-]?secret)["']?\s*[:=]\s*"""
    r"""(?!\s*$)(?!\s*["']?\s*(?:\$\{|\{\{\s*secrets/|\$[A-Z_]|null\b|none\b|~|["']{2}|<[^>]*>\s*$))(?P<value>.+)$"""
)
CONFIG_SUFFIXES = {".yml", ".yaml", ".json", ".toml", ".ini", ".cfg", ".env", ".conf"}


def repo_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [REPO / p for p in out.split("\0") if p and (REPO / p).is_file()]


def scan_text(name: str, text: str) -> list[str]:
    hits = [f"{name}: {kind}" for kind, pat in TOKEN_PATTERNS.items() if re.search(pat, text)]
    if Path(name).suffix in CONFIG_SUFFIXES or Path(name).name.startswith(".env"):
        hits += [
            f"{name}: literal secret value in {m.group(0).strip()[:60]!r}" for m in SECRET_ASSIGNMENT.finditer(text)
        ]
    return hits


def test_repository_has_no_token_like_strings():
    files = repo_files()
    assert len(files) > 20 and any(p.suffix == ".py" for p in files)
    hits = []
    for p in files:
        data = p.read_bytes()
        if len(data) > 5_000_000:
            continue
        hits += scan_text(str(p.relative_to(REPO)), data.decode("utf-8", errors="replace"))
    assert not hits, "possible secrets committed:\n" + "\n".join(hits)


def _fake(prefix: str, body: str) -> str:
    return prefix + body  # built at run time so this file never holds a token-shaped literal


@pytest.mark.parametrize(
    "text, name",
    [
        (_fake("dapi", "0123456789abcdef" * 2), "a.py"),
        (_fake("ghp_", "A" * 36), "b.md"),
        (_fake("hf_", "abcdefghijABCDEFGHIJ0123456789abcd"), "c.sh"),
        (_fake("AKIA", "ABCDEFGHIJKLMNOP"), "d.txt"),
        ("-----BEGIN " + "RSA PRIVATE KEY-----", "e.pem"),
        ("workspace:\n  host: https://x\n  token: abc123secretvalue\n", "databricks.yml"),
        ('{"client_secret": "s3cr3t"}', "conf.json"),
        ("DATABRICKS_TOKEN=abc123\n", ".env"),
    ],
)
def test_secret_scanner_catches_planted_secrets(text, name):
    assert scan_text(name, text)


@pytest.mark.parametrize(
    "text, name",
    [
        ("token: ${var.databricks_token}\n", "databricks.yml"),
        ("password: '{{secrets/dolly/hf_token}}'\n", "job.yml"),
        ("token:\n", "x.yaml"),
        ('{"token": ""}', "x.json"),
        ("api_key: $HF_TOKEN\n", "x.yml"),
        ("tokenizer: ../shared/data/tokenizer/gpt-neox-20b\n", "x.yml"),
    ],
)
def test_secret_scanner_allows_references(text, name):
    assert scan_text(name, text) == []


def test_bundles_and_configs_take_credentials_from_env_or_secret_scopes():
    """Bundle/config files may mention credentials only as env vars, bundle variables or secret scopes."""
    files = [p for p in repo_files() if p.suffix in {".yml", ".yaml"} and "tests/data" not in str(p)]
    literal = []
    for p in files:
        for m in re.finditer(
            r"(?im)^\s*(host_token|token|pat|personal_access_token|password|client_secret)\s*:\s*(.+)$",
            p.read_text(errors="replace"),
        ):
            value = m.group(2).strip().strip("'\"")
            if value and not re.match(r"^(\$\{|\{\{\s*secrets/|\$[A-Z_])", value):
                literal.append(f"{p.relative_to(REPO)}: {m.group(1)}")
    assert not literal, literal


# --- model loading -------------------------------------------------------------------------

MODEL_LOADER = re.compile(r"(Model|ForCausalLM|ForSequenceClassification|Pipeline)$")


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            owner = f.value if isinstance(f, ast.Attribute) else None
            owner_name = (
                owner.id if isinstance(owner, ast.Name) else owner.attr if isinstance(owner, ast.Attribute) else ""
            )
            yield node, name, owner_name


def loading_violations(source: str, filename: str) -> list[str]:
    """Model loads must not trust remote code and must choose safetensors; torch.load weights only."""
    out = []
    for node, name, owner in _calls(ast.parse(source, filename)):
        kw = {k.arg: k.value for k in node.keywords if k.arg}
        where = f"{filename}:{node.lineno}"
        trc = kw.get("trust_remote_code")
        if isinstance(trc, ast.Constant) and trc.value is True:
            out.append(f"{where}: trust_remote_code=True hard-coded")
        if name == "from_pretrained" and MODEL_LOADER.search(owner or ""):
            st = kw.get("use_safetensors")
            if st is None or (isinstance(st, ast.Constant) and st.value is not True):
                out.append(f"{where}: {owner}.from_pretrained without use_safetensors=True (or an opt-in flag)")
        if name == "load" and owner == "torch":
            wo = kw.get("weights_only")
            if not (isinstance(wo, ast.Constant) and wo.value is True):
                out.append(f"{where}: torch.load without weights_only=True (pickle can run code)")
        if name in ("load", "loads") and owner in ("pickle", "cloudpickle", "dill"):
            out.append(f"{where}: {owner}.{name} on data that could come from a checkpoint")
    return out


def test_package_loads_models_without_remote_code_and_from_safetensors():
    hits = []
    for p in sorted((REPO / "dolly_spark").rglob("*.py")):
        hits += loading_violations(p.read_text(), str(p.relative_to(REPO)))
    assert not hits, "\n".join(hits)


@pytest.mark.parametrize(
    "src",
    [
        "AutoModelForCausalLM.from_pretrained(p, trust_remote_code=True, use_safetensors=True)",
        "AutoModelForCausalLM.from_pretrained(p)",
        "transformers.AutoModelForCausalLM.from_pretrained(p, use_safetensors=False)",
        "GPTNeoXForCausalLM.from_pretrained(p, use_safetensors=None)",
        "torch.load(f)",
        "torch.load(f, weights_only=False)",
        "pickle.load(fh)",
        "AutoTokenizer.from_pretrained(p, trust_remote_code=True)",
    ],
)
def test_loading_check_catches_unsafe_calls(src):
    assert loading_violations(src, "x.py")


@pytest.mark.parametrize(
    "src",
    [
        "AutoModelForCausalLM.from_pretrained(p, use_safetensors=True)",
        "AutoModelForCausalLM.from_pretrained(p, use_safetensors=True, trust_remote_code=cfg.trust_remote_code)",
        "AutoTokenizer.from_pretrained(p)",
        "torch.load(f, weights_only=True, map_location='cpu')",
    ],
)
def test_loading_check_allows_safe_calls(src):
    assert loading_violations(src, "x.py") == []


# --- writes confined to their root ---------------------------------------------------------


def test_paths_inside_root_are_allowed(tmp_path):
    root = tmp_path / "run"
    root.mkdir()
    assert ensure_within_root("ckpt/step-10", root) == (root / "ckpt" / "step-10").resolve()
    assert ensure_within_root(root / "a" / ".." / "b", root) == (root / "b").resolve()
    assert ensure_within_root(root, root) == root.resolve()
    assert ensure_within_root(f"file://{root}/mlruns/1", root) == (root / "mlruns" / "1").resolve()
    assert ensure_within_root(f"sqlite:///{root}/mlflow.db", root) == (root / "mlflow.db").resolve()
    assert safe_join(root, "checkpoints", "step-5") == (root / "checkpoints" / "step-5").resolve()
    assert (
        str(ensure_within_root("dbfs:/Volumes/c/s/v/run/x", "dbfs:/Volumes/c/s/v/run")) == "dbfs:/Volumes/c/s/v/run/x"
    )


@pytest.mark.parametrize(
    "make_path",
    [
        lambda root: "../escape",
        lambda root: "ckpt/../../escape",
        lambda root: "/etc/passwd",
        lambda root: str(root) + "2/sibling",  # a prefix of the root is not the root
        lambda root: f"file:///tmp/elsewhere/{root.name}",
        lambda root: f"sqlite:///{root.parent}/mlflow.db",
        lambda root: "s3://bucket/x",
        lambda root: "dbfs:/Volumes/c/s/v/other",
        lambda root: "ckpt\x00/x",
        lambda root: "~/outside",
    ],
)
def test_paths_outside_root_are_refused(tmp_path, make_path):
    root = tmp_path / "run"
    root.mkdir()
    with pytest.raises(PathOutsideRootError, match="outside|not inside|NUL"):
        ensure_within_root(make_path(root), root)


def test_symlink_out_of_root_is_refused(tmp_path):
    root, outside = tmp_path / "run", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(PathOutsideRootError):
        ensure_within_root(root / "link" / "model.safetensors", root)
    with pytest.raises(PathOutsideRootError):
        safe_join(root, "..", "x")
    with pytest.raises(PathOutsideRootError):
        safe_join(root, "")
    with pytest.raises(PathOutsideRootError):
        ensure_within_root("dbfs:/Volumes/c/s/v/run/../../x", "dbfs:/Volumes/c/s/v/run")


@pytest.fixture(scope="module")
def pickle_only_and_remote_code_models(tmp_path_factory):
    """Two model dirs that must not load by default: .bin (pickle) weights only, and custom code."""
    import json as _json

    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from tests.shared_data import TOKENIZER_DIR

    base = tmp_path_factory.mktemp("unsafe_models")
    cfg = GPTNeoXConfig(
        vocab_size=50304,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    model = GPTNeoXForCausalLM(cfg)
    pickle_dir = base / "pickle_only"
    model.save_pretrained(str(pickle_dir), safe_serialization=False)
    if not (pickle_dir / "pytorch_model.bin").exists():  # some versions ignore the flag: write it ourselves
        for f in pickle_dir.glob("*.safetensors"):
            f.unlink()
        torch.save(model.state_dict(), pickle_dir / "pytorch_model.bin")
    remote_dir = base / "remote_code"
    model.save_pretrained(str(remote_dir), safe_serialization=True)
    sentinel = base / "REMOTE_CODE_RAN"
    (remote_dir / "evil_model.py").write_text(
        f"open({str(sentinel)!r}, 'w').write('ran')\nfrom transformers import GPTNeoXForCausalLM as EvilModel\n"
    )
    conf = _json.loads((remote_dir / "config.json").read_text())
    conf["auto_map"] = {"AutoModelForCausalLM": "evil_model.EvilModel"}
    (remote_dir / "config.json").write_text(_json.dumps(conf))
    for d in (pickle_dir, remote_dir):
        for f in Path(TOKENIZER_DIR).iterdir():
            (d / f.name).write_bytes(f.read_bytes())
    assert not list(pickle_dir.glob("*.safetensors")) and (pickle_dir / "pytorch_model.bin").exists()
    return pickle_dir, remote_dir, sentinel


def _load_never_runs_custom_code(load, remote_dir, sentinel) -> None:
    """Without the opt-in, a config's auto_map is not followed: the load either fails or uses the
    library's own class for the model type. Either way the custom module must never execute."""
    try:
        model = load(remote_dir)
    except Exception as err:
        assert re.search(r"(?i)trust_remote_code|custom code|remote code", str(err)), err
    else:
        assert type(model).__module__.startswith("transformers."), type(model)
    assert not sentinel.exists(), "custom model code ran without trust_remote_code"


def test_generation_loader_refuses_pickle_weights_and_remote_code(pickle_only_and_remote_code_models):
    from dolly_spark.serve.generate import load_for_generation

    pickle_dir, remote_dir, sentinel = pickle_only_and_remote_code_models
    with pytest.raises(Exception, match="safetensors"):
        load_for_generation(pickle_dir, device="cpu")
    _load_never_runs_custom_code(lambda d: load_for_generation(d, device="cpu")[0], remote_dir, sentinel)


def test_training_loader_never_runs_remote_code(pickle_only_and_remote_code_models):
    from dolly_spark.text.tokenizer import load_hf_tokenizer
    from dolly_spark.train.model import build_model
    from tests.shared_data import TOKENIZER_DIR

    _, remote_dir, sentinel = pickle_only_and_remote_code_models
    tok = load_hf_tokenizer(str(TOKENIZER_DIR))
    _load_never_runs_custom_code(lambda d: build_model(str(d), tok), remote_dir, sentinel)


def test_training_loader_refuses_pickle_only_weights(pickle_only_and_remote_code_models):
    from dolly_spark.text.tokenizer import load_hf_tokenizer
    from dolly_spark.train.model import build_model
    from tests.shared_data import TOKENIZER_DIR

    pickle_dir, _, _ = pickle_only_and_remote_code_models
    with pytest.raises(Exception, match="safetensors"):
        build_model(str(pickle_dir), load_hf_tokenizer(str(TOKENIZER_DIR)))


def test_an_adapter_without_safetensors_is_refused_not_unpickled(tmp_path):
    from dolly_spark.text.adapters import load_adapter

    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.bin").write_bytes(b"not loaded")  # peft would torch.load this
    with pytest.raises(ValueError, match="no adapter_model.safetensors; only safetensors adapters are loaded"):
        load_adapter(object(), tmp_path)
