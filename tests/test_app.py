"""The browser app, driven end to end in headless Chromium: upload -> box -> propagate -> download."""

import os
import shutil
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
import pytest

from vos.data import read_mask
from vos.data.synthetic import write_mp4

ROOT = Path(__file__).resolve().parents[1]
N = 24  # frames of the demo clip used
CHROMIUM, DRIVER = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")


@pytest.fixture
def server(tmp_path):
    from werkzeug.serving import make_server

    from vos.app import create_app

    # no time cap on adaptation: on a loaded machine the default 120 s cap stops it at a step that depends on the
    # load, and the app's masks are compared with infer.py's below
    app = create_app(tmp_path / "app_out", max_upload_mb=5, overrides=["adapt.seconds=0"])
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}", tmp_path / "app_out", app
    srv.shutdown()


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM and DRIVER):
        pytest.skip("no chromium/chromedriver on this machine (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1000"):
        opts.add_argument(arg)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.downloads = downloads
    yield driver
    driver.quit()


def _wait(cond, timeout=120, what="condition"):
    end = time.time() + timeout
    while time.time() < end:
        value = cond()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_upload_box_propagate_download(server, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from vos.infer import main as infer_main

    from vos.data import VideoFile

    url, app_out, app = server
    demo = VideoFile(ROOT / "examples" / "bedroom.mp4", short_side=270)  # the shipped demo clip, 480x270
    video = tmp_path / "clip.mp4"
    write_mp4(video, [demo[t] for t in range(N)], fps=30)
    d = browser
    d.get(url)
    msg = lambda: d.find_element(By.ID, "message")  # noqa: E731

    # bad uploads get a visible message
    (tmp_path / "notes.txt").write_text("not a video")
    d.find_element(By.ID, "video-file").send_keys(str(tmp_path / "notes.txt"))
    d.find_element(By.ID, "upload").click()
    _wait(lambda: "not a video" in msg().text, 30, "the bad-upload message")
    assert msg().get_attribute("class") == "error"

    d.find_element(By.ID, "video-file").send_keys(str(video))
    d.find_element(By.ID, "upload").click()
    _wait(lambda: "Loaded" in msg().text, 30, "the upload")
    canvas = d.find_element(By.ID, "canvas")
    _wait(lambda: canvas.size["width"] > 0 and d.execute_script("return document.getElementById('view').complete"))
    box = (150, 2, 262, 200)  # the girl
    sx, sy = canvas.size["width"] / 480, canvas.size["height"] / 270
    cx, cy = canvas.size["width"] / 2, canvas.size["height"] / 2  # selenium offsets are from the centre
    ActionChains(d).move_to_element_with_offset(canvas, box[0] * sx - cx, box[1] * sy - cy).click_and_hold() \
        .move_by_offset((box[2] - box[0]) * sx, (box[3] - box[1]) * sy).release().perform()
    _wait(lambda: "objects 1" in msg().text, 60, "the box mask")

    # a mask PNG of the wrong size is rejected with a message
    from vos.data import write_mask
    write_mask(tmp_path / "small.png", np.ones((10, 10), np.uint8))
    d.find_element(By.ID, "mask-file").send_keys(str(tmp_path / "small.png"))
    d.find_element(By.ID, "upload-mask").click()
    _wait(lambda: "10x10" in msg().text, 30, "the wrong-size message")

    assert d.find_element(By.ID, "adapt").is_selected()  # test-time adaptation is on by default
    d.find_element(By.ID, "propagate").click()
    _wait(lambda: "Adapting to the video" in msg().text, 60, "the adaptation progress")
    _wait(lambda: msg().text == "Done.", 300, "propagation")
    assert d.find_element(By.ID, "progress").get_attribute("value") == str(N)
    shot = Path(os.environ.get("VOS_APP_SCREENSHOT", tmp_path / "app.png"))
    d.save_screenshot(str(shot))
    d.find_element(By.ID, "download-masks").click()
    zpath = _wait(lambda: next(iter(d.downloads.glob("masks.zip")), None), 60, "the masks download")
    _wait(lambda: zipfile.is_zipfile(zpath), 30, "a complete zip")
    (tmp_path / "app_masks").mkdir()
    zipfile.ZipFile(zpath).extractall(tmp_path / "app_masks")
    app_masks = sorted((tmp_path / "app_masks" / "masks").glob("*.png"))
    assert len(app_masks) == N

    # the same video and the mask the app built, through infer.py: the same masks
    (session,) = app.config["vos_sessions"].values()  # the app keeps prompts in memory, not in files
    write_mask(tmp_path / "prompt.png", session.prompts[0])
    assert infer_main(["--input", str(video), "--mask", str(tmp_path / "prompt.png"), "--out",
                       str(tmp_path / "cli"), "adapt.seconds=0"]) == 0
    ious = []
    for p in app_masks:
        a, b = read_mask(p)[0] > 0, read_mask(tmp_path / "cli" / "clip" / p.name)[0] > 0
        ious.append((a & b).sum() / (a | b).sum() if (a | b).any() else 1.0)
    assert np.mean(ious) > 0.99, ious
    prompt = read_mask(tmp_path / "prompt.png")[0] == 1
    inside = prompt[box[1]:box[3], box[0]:box[2]].mean()
    assert prompt.sum() == prompt[box[1]:box[3], box[0]:box[2]].sum() and 0.2 < inside < 0.9  # a girl, not the box
    # nothing written outside the app's folder but the browser's download
    assert all(p.is_relative_to(app_out) for p in app_out.rglob("*"))


def test_api_rejects_uploads_that_are_too_large_or_not_videos(tmp_path):
    import io

    from vos.app import create_app

    client = create_app(tmp_path / "out", max_upload_mb=1).test_client()
    big = client.post("/api/upload", data={"video": (io.BytesIO(b"0" * (2 * 2 ** 20)), "big.mp4")})
    assert big.status_code == 413 and "larger than 1 MB" in big.get_json()["error"]
    bad = client.post("/api/upload", data={"video": (io.BytesIO(b"not a video"), "x.mp4")})
    assert bad.status_code == 400 and "not a video" in bad.get_json()["error"]
    assert client.get("/api/../../etc/passwd/status").status_code == 404
    assert client.get("/api/" + "0" * 32 + "/status").status_code == 404
    assert not any((tmp_path / "out").iterdir())  # rejected uploads leave nothing behind
    demo = client.post("/api/demo").get_json()  # the shipped demo clip, without uploading anything
    assert demo["frames"] == 200 and (demo["width"], demo["height"]) == (960, 540)
    sid = demo["session"]
    assert client.get(f"/api/{sid}/frame/150.jpg").status_code == 200
    assert "outside the video" in client.get(f"/api/{sid}/frame/200.jpg").get_json()["error"]
    r = client.post(f"/api/{sid}/prompt", json={"frame": 0, "object": 2, "box": [140, 130, 300, 410]})
    assert r.get_json()["objects"] == [2]
    empty = client.post("/api/demo").get_json()["session"]
    assert "at least one object" in client.post(f"/api/{empty}/propagate").get_json()["error"]


def _square_video(path: Path, x0: int, n: int = 8) -> np.ndarray:
    """A flat square moving right over smooth noise, written as an mp4; returns its id maps."""
    from vos.data.synthetic import square_clip

    frames, masks = square_clip([(x0, 60, 6, 0)], n, size=56, seed=x0)
    write_mp4(path, list(frames), fps=12)
    return masks


def test_four_people_at_once_each_get_their_own_masks(tmp_path):
    """Four clients upload a video each, give a box and propagate at the same time (two of them adapting to
    their video first) while frame requests keep arriving: each gets the masks of its own video (the shared
    model, one Tracker per propagation, one reader per session under a lock)."""
    import io

    from vos.app import create_app

    app = create_app(tmp_path / "out", overrides=["adapt.steps=2", "adapt.size=64", "adapt.batch_size=1"])
    videos = {x0: tmp_path / f"v{x0}.mp4" for x0 in (20, 80, 140, 200)}
    truth = {x0: _square_video(p, x0) for x0, p in videos.items()}
    results, errors = {}, []

    def client(x0):
        try:
            c = app.test_client()
            info = c.post("/api/upload", data={"video": (io.BytesIO(videos[x0].read_bytes()), "v.mp4")}).get_json()
            sid = info["session"]
            r = c.post(f"/api/{sid}/prompt", json={"frame": 0, "object": 1, "box": [x0 - 4, 56, x0 + 60, 120]})
            assert r.status_code == 200, r.get_json()
            adapt = x0 in (80, 200)
            state = c.post(f"/api/{sid}/propagate", json={"adapt": adapt}).get_json()["state"]
            assert state == ("adapting" if adapt else "running")
            for t in range(200):  # frame requests while every session propagates
                assert c.get(f"/api/{sid}/frame/{t % 8}.jpg").status_code == 200
                status = c.get(f"/api/{sid}/status").get_json()
                if status["state"] not in ("adapting", "running"):
                    break
            _wait(lambda: c.get(f"/api/{sid}/status").get_json()["state"] not in ("adapting", "running"), 180,
                  "propagation")
            status = c.get(f"/api/{sid}/status").get_json()
            assert status["state"] == "done" and (status["adapt_seconds"] > 0) == adapt, status
            z = zipfile.ZipFile(io.BytesIO(c.get(f"/api/{sid}/masks.zip").data))
            results[x0] = [np.array(Image.open(z.open(n))) for n in sorted(z.namelist())]
        except Exception as e:  # reported in the main thread
            errors.append(f"{x0}: {e!r}")

    threads = [threading.Thread(target=client, args=(x0,)) for x0 in videos]
    for th in threads:
        th.start()
    for th in threads:
        th.join(300)
    assert not errors, errors
    for x0, masks in results.items():
        assert len(masks) == 8
        ious = [((m == 1) & (g == 1)).sum() / ((m == 1) | (g == 1)).sum() for m, g in zip(masks, truth[x0])]
        assert min(ious) > 0.8, (x0, np.round(ious, 2))


def test_old_sessions_are_evicted(tmp_path):
    """Memory stays bounded: beyond max_sessions the least recently used session is closed (its reader released,
    its folder removed); idle ones go after idle_minutes."""
    import io

    from vos.app import create_app

    video = tmp_path / "v.mp4"
    _square_video(video, 20, n=4)
    app = create_app(tmp_path / "out", max_sessions=3)
    c = app.test_client()
    sessions = app.config["vos_sessions"]
    made = []
    for _ in range(7):
        sid = c.post("/api/upload", data={"video": (io.BytesIO(video.read_bytes()), "v.mp4")}).get_json()["session"]
        assert c.get(f"/api/{sid}/frame/1.jpg").status_code == 200  # opens its reader
        made.append((sid, sessions[sid]))
    assert list(sessions) == [sid for sid, _ in made[-3:]]
    for sid, s in made[:-3]:
        assert s.frames._reader is None and s.frames._container is None and not (tmp_path / "out" / sid).exists()
        assert c.get(f"/api/{sid}/status").status_code == 404
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(sid for sid, _ in made[-3:])
    idle = create_app(tmp_path / "out2", max_sessions=3, idle_minutes=0)
    ci = idle.test_client()
    for _ in range(3):
        ci.post("/api/upload", data={"video": (io.BytesIO(video.read_bytes()), "v.mp4")})
    assert len(idle.config["vos_sessions"]) == 1  # each new upload closed the idle ones
