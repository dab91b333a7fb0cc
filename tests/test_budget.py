"""`itrbench budget`: sums Snakemake benchmark files per rule kind."""
from itrbench.cli import main

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def bench(path, s, rss, cpu):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{s}\t0:00:01\t{rss}\t1\t1\t1\t0\t0\t50\t{cpu}\n")


def test_sums_per_rule_and_prints_total_last(tmp_path, capsys):
    bench(tmp_path / "train" / "a.seed0.tsv", 10.0, 500.5, 9.5)
    bench(tmp_path / "train" / "a.seed1.tsv", 12.0, 700.0, 11.5)
    bench(tmp_path / "cache_text" / "toy-f30k.test.tsv", 3.0, 900.0, 4.0)
    (tmp_path / "table" / "x.tsv").parent.mkdir()
    (tmp_path / "table" / "x.tsv").write_text(HEADER + "0.5\t0:00:00\t-\t-\t-\t-\t-\t-\t-\t-\n")  # unmeasured
    assert main(["budget", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "core_seconds=25.0"
    train = next(line.split() for line in lines if line.startswith("train"))
    assert train[1:4] == ["2", "22.0", "21.0"] and train[-1] == "700"
    assert next(line for line in lines if line.startswith("table")).split()[3] == "0.0"


def test_missing_or_foreign_files_are_one_clear_error(tmp_path, capsys):
    assert main(["budget", str(tmp_path / "none")]) != 0
    assert "no benchmark folder" in capsys.readouterr().err
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "x.tsv").write_text("a\tb\n1\t2\n")
    assert main(["budget", str(tmp_path)]) != 0
    assert "x.tsv: expected a Snakemake benchmark file" in capsys.readouterr().err
