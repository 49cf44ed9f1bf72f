"""Reading Europarl: line files, .gz, raw sessions, the sentence splitter, the download."""

from __future__ import annotations

import gzip
import http.server
import io
import logging
import socket
import tarfile
import threading
from pathlib import Path

import pytest
from conftest import EUROPARL_30K, REPO, SHARED_DATA, TEST_DATA, requires_shared

from minibert.corpus import read_sentences, split_sentences
from minibert.data import EuroparlDataModule
from minibert.errors import MinibertError
from minibert.machinery.download import FRENCH_MEMBER, fetch_europarl_fr

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
