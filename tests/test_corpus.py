"""Reading Europarl: line files, .gz, raw sessions, the sentence splitter, the download."""

from __future__ import annotations

import codecs
import gzip
import http.server
import io
import logging
import re
import socket
import tarfile
import threading
import unicodedata
from pathlib import Path

import pytest
from conftest import EUROPARL_30K, REPO, SHARED_DATA, TEST_DATA, requires_shared

from minibert.corpus import read_sentences, split_sentences
from minibert.data import EuroparlDataModule
from minibert.errors import MinibertError
from minibert.machinery.download import FRENCH_MEMBER, corpus_file, fetch_europarl_fr

SESSIONS = TEST_DATA / "sessions"
RAW_FR = SHARED_DATA / "europarl" / "raw" / "fr"

# What the splitter must make of tests/data/sessions/ (both files, in name order).
EXPECTED_SESSION_SENTENCES = [
    "Ouverture de la séance",
    "La séance est ouverte à 9 h 30.",
    "Je donne la parole à M. Evans pour une motion de procédure.",
    "Mme Plooij-van Gorsel a posé hier une question écrite.",
    "Elle attend toujours la réponse.",
    "Le budget progresse de 1.5 % cette année, soit 2.000 euros de plus par bureau.",
    "Ce n'est pas assez.",
    "Nous parlons des routes, des ponts, des ports, etc. Tout cela coûte cher.",
    'Le rapporteur a écrit : "Qui paiera ? Personne ne le sait."',
    "Ensuite il s'est tu.",
    "Mon collègue a demandé « Pourquoi attendre ? Rien ne presse. »",
    "Puis il a voté pour.",
    "J'ai lu le livre de J. K. Martin sur ce sujet.",
    "Il est excellent !",
    "Votes",
    "Le vote aura lieu demain.",
    "MM. Dupont et Durand sont d'accord.",
    "Mmes Leroy et Morel aussi.",
    "Reprise de la séance",
    "La séance est reprise.",
    "Avez-vous des questions ?",
]


def test_session_directory_gives_titles_and_split_sentences_in_order():
    assert list(read_sentences(SESSIONS)) == EXPECTED_SESSION_SENTENCES


def test_one_session_file():
    assert list(read_sentences(SESSIONS / "ep-01-02-04.txt")) == EXPECTED_SESSION_SENTENCES[-3:]


@pytest.mark.parametrize(
    "paragraph, sentences",
    [
        ("Merci, M. Evans. Passons au vote.", ["Merci, M. Evans.", "Passons au vote."]),
        ("Il a dit « Non. » Elle a ri.", ["Il a dit « Non. »", "Elle a ri."]),
        ('Fin. "Début" du texte.', ["Fin.", '"Début" du texte.']),
        ("Vraiment ? Oui ! Bien.", ["Vraiment ?", "Oui !", "Bien."]),
        ("Le taux passe de 3.5 à 4.2 points.", ["Le taux passe de 3.5 à 4.2 points."]),
        ("Voyez le Dr. Martin et cf. Annexe.", ["Voyez le Dr. Martin et cf. Annexe."]),
        ("Une phrase sans point final", ["Une phrase sans point final"]),
        ("pas de majuscule. après le point", ["pas de majuscule. après le point"]),
    ],
)
def test_split_sentences_cases(paragraph, sentences):
    assert split_sentences(paragraph) == sentences


def test_line_file_plain_and_gz_skip_empty_lines(tmp_path):
    text = "Première phrase.\n\n  \nDeuxième phrase.\r\n"
    (tmp_path / "c.txt").write_text(text, encoding="utf-8")
    with gzip.open(tmp_path / "c.txt.gz", "wt", encoding="utf-8") as file:
        file.write(text)
    expected = ["Première phrase.", "Deuxième phrase."]
    assert (
        list(read_sentences(tmp_path / "c.txt"))
        == expected
        == list(read_sentences(str(tmp_path / "c.txt.gz")))
    )


# --- text as it arrives: decomposed accents, byte-order marks, other line ends --------------

SENTENCES = "L'été sera chaud.\nÉté comme hiver, le Parlement siège.\n"


def write(path: Path, text: str, form: str = "NFC", prefix: bytes = b"", newline: str = "\n") -> Path:
    """``text`` saved as UTF-8 in Unicode form ``form`` (NFD: as macOS saves it), after ``prefix``, lines ending with ``newline``."""
    path.write_bytes(prefix + unicodedata.normalize(form, text).replace("\n", newline).encode("utf-8"))
    return path


@pytest.mark.parametrize("form", ["NFC", "NFD"])
@pytest.mark.parametrize("prefix", [b"", codecs.BOM_UTF8])
@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("suffix", [".txt", ".txt.gz"])
def test_every_way_of_saving_a_file_reads_the_same_sentences(tmp_path, form, prefix, newline, suffix):
    path = write(tmp_path / "saved.txt", SENTENCES, form, prefix, newline)
    if suffix == ".txt.gz":
        path = path.with_suffix(suffix)
        path.write_bytes(gzip.compress((tmp_path / "saved.txt").read_bytes()))
    assert list(read_sentences(path)) == SENTENCES.splitlines()  # composed: "é" is one character


@pytest.mark.parametrize("form", ["NFC", "NFD"])
@pytest.mark.parametrize("prefix", [b"", codecs.BOM_UTF8])
@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_session_files_are_recognised_however_saved(tmp_path, form, prefix, newline):
    session = (SESSIONS / "ep-01-02-04.txt").read_text(encoding="utf-8")
    path = write(tmp_path / "ep-01-02-04.txt", session, form, prefix, newline)
    assert list(read_sentences(path)) == EXPECTED_SESSION_SENTENCES[-3:]  # no tag line became a sentence
    assert list(read_sentences(tmp_path)) == EXPECTED_SESSION_SENTENCES[-3:]  # in a directory too


def test_a_byte_order_mark_where_files_were_joined_is_no_part_of_a_word(tmp_path):
    first, second = codecs.BOM_UTF8 + b"Un.\n", codecs.BOM_UTF8 + "Été.\n".encode()
    (tmp_path / "joined.txt").write_bytes(first + second)  # cat a.txt b.txt
    assert list(read_sentences(tmp_path / "joined.txt")) == ["Un.", "Été."]


def test_a_sentence_file_may_start_with_a_bracket(tmp_path):
    text = "<mask> est le mot caché.\n< 5 % des voix.\n<Pour> mémoire.\n"
    (tmp_path / "lines.txt").write_text(text, encoding="utf-8")
    assert list(read_sentences(tmp_path / "lines.txt")) == text.splitlines()


def test_a_first_tag_line_that_is_broken_is_still_reported(tmp_path):
    session = tmp_path / "ep-01-01-01.txt"
    session.write_text("<CHAPTER ID=1\nTitre\n", encoding="utf-8")
    with pytest.raises(MinibertError, match=f"{session}:1: broken session tag line"):
        list(read_sentences(session))


def test_a_decomposed_or_mixed_corpus_gives_one_composed_word(tmp_path):
    """A corpus saved in NFD, or half in each form, gives the vocabulary a keyboard types."""
    lines = ["L'été est là, l'été passe."] * 30
    mixed = "\n".join(unicodedata.normalize(("NFC", "NFD")[i % 2], line) for i, line in enumerate(lines))
    for name, text in [("nfd.txt", unicodedata.normalize("NFD", "\n".join(lines))), ("mixed.txt", mixed)]:
        (tmp_path / name).write_text(text + "\n", encoding="utf-8")
        data = EuroparlDataModule(
            corpus=str(tmp_path / name), data_dir=str(tmp_path / "data"), val_fraction=0.0, batch_size=4
        )
        data.prepare_data()
        data.setup("fit")
        words = data.vocab.itos[data.vocab.num_specials :]
        assert sorted(words) == sorted(["l", "'", "été", "est", "là", ",", "passe", "."])
        assert all(unicodedata.is_normalized("NFC", word) for word in words)


# --- bad input: one clear line naming the file (and line) ------------------------------


def test_missing_path():
    with pytest.raises(MinibertError, match="corpus not found: nowhere/corpus.txt"):
        list(read_sentences("nowhere/corpus.txt"))


def test_directory_without_session_files(tmp_path):
    (tmp_path / "notes.md").write_text("rien")
    with pytest.raises(MinibertError, match=f"no Europarl session files .* in directory {tmp_path}"):
        list(read_sentences(tmp_path))


def test_broken_tag_line_names_file_and_line(tmp_path):
    session = tmp_path / "ep-01-01-01.txt"
    session.write_text('<CHAPTER ID=1>\nTitre\n<SPEAKER ID=2 NAME="Martin"\nBonjour.\n', encoding="utf-8")
    with pytest.raises(MinibertError) as error:
        list(read_sentences(session))
    assert str(error.value).startswith(f"{session}:3: broken session tag line")
    assert "\n" not in str(error.value)


def test_non_utf8_bytes_are_replaced_with_one_warning(tmp_path, caplog):
    corpus = tmp_path / "latin1.txt"
    corpus.write_bytes(
        b"Bonne phrase.\n" + "Ceci est codé en latin-1 : été.\n".encode("latin-1") * 2 + b"Fin.\n"
    )
    with caplog.at_level(logging.WARNING, logger="minibert.corpus"):
        sentences = list(read_sentences(corpus))
    assert len(sentences) == 4 and sentences[1] == "Ceci est cod\ufffd en latin-1 : \ufffdt\ufffd."
    assert [r.getMessage() for r in caplog.records] == [
        f"{corpus}: 2 line(s) are not valid UTF-8 (first: line 2); the bad bytes were replaced by U+FFFD"
    ]


def test_truncated_gz(tmp_path):
    whole = gzip.compress("Une phrase assez longue pour être compressée.\n".encode() * 2000)
    corpus = tmp_path / "cut.txt.gz"
    corpus.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(MinibertError, match=f"{corpus}: the gzip file is truncated or damaged"):
        list(read_sentences(corpus))


def test_a_file_of_one_huge_line_says_so(tmp_path):
    """Line breaks lost (or of a kind not read): one clear line, from the reader and from the data module."""
    corpus = tmp_path / "one_line.txt"
    corpus.write_text("La séance est ouverte. " * 1000, encoding="utf-8")
    expected = f"{corpus} is one line of 23,000 characters, not one sentence a line: put each sentence on a line of its own"
    with pytest.raises(MinibertError, match=re.escape(expected)):
        list(read_sentences(corpus))
    with pytest.raises(MinibertError, match=re.escape(expected)):
        EuroparlDataModule(corpus=str(corpus), data_dir=str(tmp_path / "data")).setup("fit")
    (tmp_path / "short.txt").write_text("Une seule phrase.", encoding="utf-8")
    assert list(read_sentences(tmp_path / "short.txt")) == ["Une seule phrase."]  # one sentence is no error


def test_utf16_text_is_named(tmp_path):
    corpus = tmp_path / "notepad.txt"
    corpus.write_text("Été.\n", encoding="utf-16")
    with pytest.raises(MinibertError, match=f"{corpus} is UTF-16 text .*; save it as UTF-8"):
        list(read_sentences(corpus))


# --- the splitter against the release's own sentences -----------------------------------


@requires_shared(RAW_FR)
def test_splitter_agrees_with_the_release_on_92_percent_of_sentences(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from sentence_split import verbatim_fraction

    fraction, _ = verbatim_fraction(RAW_FR, EUROPARL_30K)
    print(f"verbatim={fraction:.4f}")
    assert fraction >= 0.92


# --- the download of europarl-v7-fr, from a server on this machine -----------------------


def make_release(folder: Path) -> bytes:
    """A small fr-en.tgz shaped like the release: a French and an English member."""
    french = "Première phrase du corpus.\nDeuxième phrase du corpus.\n".encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in ((FRENCH_MEMBER, french), ("europarl-v7.fr-en.en", b"First.\nSecond.\n")):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    (folder / "fr-en.tgz").write_bytes(buffer.getvalue())
    return french


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/www; yields (base url, list of request paths)."""
    www = tmp_path / "www"
    www.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(www), **kwargs)

        def do_GET(self):
            requests.append(self.path)
            if self.path == "/short.tgz":  # promises more bytes than it sends
                self.send_response(200)
                self.send_header("Content-Length", "100000")
                self.end_headers()
                self.wfile.write(b"\x1f\x8b" + b"x" * 100)
                return
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", www, requests
    httpd.shutdown()
    httpd.server_close()


def test_download_extracts_only_french_once(server, tmp_path):
    base, www, requests = server
    french = make_release(www)
    data_dir = tmp_path / "data"
    data = EuroparlDataModule(
        corpus="europarl-v7-fr", data_dir=str(data_dir), download_url=f"{base}/fr-en.tgz", val_fraction=0.0
    )
    vocab = data.load_vocabulary()  # built from the downloaded French
    assert {"première", "deuxième", "corpus"} <= set(vocab.stoi)
    path = fetch_europarl_fr(data_dir, f"{base}/fr-en.tgz")
    assert path == data_dir / FRENCH_MEMBER and path.read_bytes() == french
    assert sorted(p.name for p in data_dir.iterdir()) == [
        "cache",
        "downloads.json",
        FRENCH_MEMBER,
    ]  # no English, no archive, no partial file
    again = EuroparlDataModule(
        corpus="europarl-v7-fr", data_dir=str(data_dir), download_url=f"{base}/fr-en.tgz", val_fraction=0.0
    )
    assert again.load_vocabulary().itos == vocab.itos
    assert requests == ["/fr-en.tgz"]  # the second use did not download again


def test_the_benchmarks_corpus_option_finds_the_download_or_takes_a_path(tmp_path):
    """benchmarks/*.py's --corpus: europarl-v7-fr is the file base.yaml downloaded (here already whole), else a path."""
    (tmp_path / FRENCH_MEMBER).write_text("une phrase .\n", encoding="utf-8")
    # No network here: the file is found, not fetched.
    assert corpus_file("europarl-v7-fr", tmp_path) == tmp_path / FRENCH_MEMBER
    assert corpus_file("other.fr.txt", tmp_path) == Path("other.fr.txt")


def test_a_download_cut_short_later_is_fetched_again(server, tmp_path, caplog):
    """A copy of the data folder interrupted: the extracted file has fewer bytes than recorded."""
    base, www, requests = server
    french = make_release(www)
    data_dir = tmp_path / "data"
    path = fetch_europarl_fr(data_dir, f"{base}/fr-en.tgz")
    path.write_bytes(french[: len(french) // 2])
    assert fetch_europarl_fr(data_dir, f"{base}/fr-en.tgz").read_bytes() == french
    assert requests == ["/fr-en.tgz", "/fr-en.tgz"]
    assert (
        f"{path} has {len(french) // 2:,} bytes, not the {len(french):,} it had when fetched: fetching it again"
        in caplog.messages
    )


def test_download_shorter_than_announced_leaves_nothing(server, tmp_path):
    base, _, _ = server
    data_dir = tmp_path / "data"
    with pytest.raises(
        MinibertError, match=f"data.corpus: the download of {base}/short.tgz stopped at 102 of 100000 bytes"
    ):
        fetch_europarl_fr(data_dir, f"{base}/short.tgz")
    assert list(data_dir.iterdir()) == []


def test_download_without_network_says_how_to_pass_a_local_file(tmp_path):
    with socket.socket() as probe:  # a port that nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(MinibertError) as error:
        fetch_europarl_fr(tmp_path / "data", f"http://127.0.0.1:{port}/fr-en.tgz")
    message = str(error.value)
    assert message.startswith(f"data.corpus: cannot download http://127.0.0.1:{port}/fr-en.tgz")
    assert f"--data.corpus path/to/{FRENCH_MEMBER}" in message and "\n" not in message
