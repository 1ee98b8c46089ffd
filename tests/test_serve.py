"""The HTTP service against a running Serve app on 127.0.0.1 (a tiny trained checkpoint)."""

import concurrent.futures
import io
import json
import random
import shutil
import struct
import zlib

import numpy as np
import pytest
import requests
import torch
import torch.nn.functional as F
from PIL import Image

from pioneer import checkpoint, storage
from pioneer.api import Pioneer
from pioneer.data import to_uint8
from pioneer.editing import VECTORS_FILE, AttributeVectors
from pioneer.sampling import sample_latents
from tests.conftest import FACES, free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served_run(tmp_path_factory, trained_run):
    """A copy of the smoke run with attribute vectors beside its latest checkpoint: random
    unit directions (the 384-image smoke model's real ones barely move a face), made for
    this checkpoint, so that an edit visibly changes the image."""
    run = tmp_path_factory.mktemp("served") / "run"
    shutil.copytree(trained_run, run)
    latest = checkpoint.resolve(run)
    size = Pioneer.from_checkpoint(run).latent_size
    directions = F.normalize(torch.randn(3, size, generator=torch.Generator().manual_seed(0)))
    counts = torch.tensor([[8, 8]] * 3)
    names = ["Eyeglasses", "Male", "Smiling"]
    AttributeVectors(names, directions, counts, checkpoint.identity(latest)).save(
        storage.join(latest, VECTORS_FILE)
    )
    return run


@pytest.fixture(scope="module")
def service(served_run):
    """(base URL, the same model in-process) for a Serve app started here."""
    import ray
    from ray import serve

    from serve.app import build

    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build({"checkpoint": str(served_run)}), name="pioneer", route_prefix="/")
    yield f"http://127.0.0.1:{port}", Pioneer.from_checkpoint(served_run)
    serve.shutdown()
    ray.shutdown()


def image_of(response) -> np.ndarray:
    assert response.status_code == 200, response.text[:500]
    assert response.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(response.content)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def tile(images: torch.Tensor) -> np.ndarray:
    """What the service draws for one image: uint8, enlarged to >= 64 px, 2 px border."""
    from serve.inputs import png

    with Image.open(io.BytesIO(png(images, 1))) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def face(index: int = 0) -> bytes:
    return FACES[index].read_bytes()


def test_health_info_docs_and_page(service):
    base, model = service
    assert requests.get(f"{base}/healthz").json() == {"status": "ok"}
    info = requests.get(f"{base}/v1/info").json()
    assert info["resolution"] == model.resolution and info["latent_size"] == model.latent_size
    assert "Smiling" in info["attributes"] and info["images_seen"] == model.images_seen
    assert len(info["identity"]) == 64
    paths = requests.get(f"{base}/openapi.json").json()["paths"]
    for path in ("/v1/sample", "/v1/encode", "/v1/decode", "/v1/edit", "/v1/interpolate"):
        assert path in paths
    assert requests.get(f"{base}/docs").status_code == 200
    page = requests.get(f"{base}/")
    assert page.status_code == 200 and "<html" in page.text
    examples = requests.get(f"{base}/v1/examples").json()["examples"]
    assert len(examples) == 12
    jpeg = requests.get(f"{base}/v1/examples/{examples[0]}")
    assert jpeg.status_code == 200 and jpeg.content[:2] == b"\xff\xd8"


def test_sample_is_seeded_and_decode_redraws_its_latents(service):
    base, model = service
    grid = image_of(requests.post(f"{base}/v1/sample", json={"n": 4, "seed": 7}))
    assert grid.shape == (2 * 64 + 3 * 2, 2 * 64 + 3 * 2, 3)  # 2x2 tiles of 64 px, 2 px pads
    again = image_of(requests.post(f"{base}/v1/sample", json={"n": 4, "seed": 7}))
    np.testing.assert_array_equal(grid, again)
    body = requests.post(f"{base}/v1/sample", json={"n": 3, "format": "json"}).json()
    z = torch.tensor(body["latents"])
    assert z.shape == (3, model.latent_size) and len(body["images"]) == 3
    torch.testing.assert_close(z.norm(dim=1), torch.ones(3))
    expected = to_uint8(model.decode(z))
    decoded = requests.post(f"{base}/v1/decode", json={"latents": body["latents"][:1]})
    assert np.abs(image_of(decoded) - tile(expected[:1])).max() <= 1


def test_encode_reconstruct_and_edit_match_the_python_api(service):
    base, model = service
    x = model.load_images(FACES[:2])
    one = requests.post(f"{base}/v1/encode", files={"image": ("a.jpg", face(0))})
    torch.testing.assert_close(torch.tensor(one.json()["latents"]), model.encode(x[:1]))
    files = [("images", ("a.jpg", face(0))), ("images", ("b.jpg", face(1)))]
    two = torch.tensor(requests.post(f"{base}/v1/encode", files=files).json()["latents"])
    torch.testing.assert_close(two, model.encode(x), rtol=1e-4, atol=1e-5)

    reconstruction = requests.post(f"{base}/v1/reconstruct", files={"image": ("a", face(0))})
    assert np.abs(image_of(reconstruction) - tile(to_uint8(model.reconstruct(x[:1])))).max() <= 1

    edits = {"Smiling": 1.5, "Male": -1}
    data = {"attributes": json.dumps(edits)}
    edited = requests.post(f"{base}/v1/edit", files={"image": ("a", face(0))}, data=data)
    model.load_attributes()
    assert np.abs(image_of(edited) - tile(to_uint8(model.edit(x[:1], edits)))).max() <= 1
    assert np.abs(image_of(edited) - image_of(reconstruction)).max() > 20
    zero = {"attributes": json.dumps({"Smiling": 0})}
    same = requests.post(f"{base}/v1/edit", files={"image": ("a", face(0))}, data=zero)
    assert np.abs(image_of(same) - image_of(reconstruction)).max() <= 1
    vector = model.attribute_vectors.vector("Smiling")
    data = {"vector": json.dumps(vector.tolist()), "strength": "1.5"}
    by_vector = requests.post(f"{base}/v1/edit", files={"image": ("a", face(0))}, data=data)
    expected = tile(to_uint8(model.edit(x[:1], vector, 1.5)))
    assert np.abs(image_of(by_vector) - expected).max() <= 1


def test_interpolation_from_latents_or_images(service):
    base, model = service
    z = model.encode(model.load_images(FACES[:3])).tolist()
    grid = image_of(requests.post(f"{base}/v1/interpolate", json={"latents": z, "steps": 5}))
    assert grid.shape[:2] == (2 * 64 + 3 * 2, 5 * 64 + 6 * 2)  # 2 pairs x 5 steps
    files = [("images", (f"{i}.jpg", face(i))) for i in range(3)]
    from_images = requests.post(f"{base}/v1/interpolate", files=files, data={"steps": "5"})
    assert np.abs(image_of(from_images) - grid).max() <= 1


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels)


def _bad_requests(latent_size: int, rng: random.Random):
    """(kind, request kwargs for requests.request) of malformed inputs, endlessly."""
    jpeg = face(0)
    good = [0.1] * latent_size
    text = b"here is not an image"
    kinds = {
        "truncated_jpeg": lambda: ("POST", "/v1/reconstruct", {"files": {"image": ("a", jpeg[: rng.randrange(10, len(jpeg) - 1)])}}),
        "png_bomb": lambda: ("POST", "/v1/reconstruct", {"files": {"image": ("b.png", _png_header(30000, 30000))}}),
        "huge_dimensions": lambda: ("POST", "/v1/encode", {"files": {"image": ("c.png", _png_header(100000, 3))}}),
        "text_as_image": lambda: ("POST", "/v1/reconstruct", {"files": {"image": ("d.jpg", text)}}),
        "empty_body": lambda: ("POST", rng.choice(["/v1/sample", "/v1/decode", "/v1/edit", "/v1/interpolate"]), {"data": b""}),
        "wrong_content_type": lambda: ("POST", "/v1/reconstruct", {"data": b"{}", "headers": {"content-type": "application/json"}}),
        "nan_latents": lambda: ("POST", "/v1/decode", {"data": json.dumps({"latents": [[float("nan")] * latent_size]}), "headers": {"content-type": "application/json"}}),
        "wrong_length": lambda: ("POST", "/v1/decode", {"json": {"latents": [[0.1] * rng.choice([0, 1, latent_size - 1, latent_size + 1])]}}),
        "negative_n": lambda: ("POST", "/v1/sample", {"json": {"n": -rng.randrange(0, 10**6)}}),
        "giant_n": lambda: ("POST", "/v1/sample", {"json": {"n": rng.choice([65, 10**6, 10**30])}}),
        "unknown_fields": lambda: ("POST", "/v1/sample", {"json": {"n": 2, "colour": "blue"}}),
        "bad_json": lambda: ("POST", "/v1/decode", {"data": b"{\"latents\": [[1, 2,", "headers": {"content-type": "application/json"}}),
        "unknown_attribute": lambda: ("POST", "/v1/edit", {"files": {"image": ("a", jpeg)}, "data": {"attributes": json.dumps({"Wings": 1})}}),
        "strength_out_of_range": lambda: ("POST", "/v1/edit", {"files": {"image": ("a", jpeg)}, "data": {"attributes": json.dumps({"Smiling": rng.choice([5.5, -9, 1e308])})}}),
        "too_many_faces": lambda: ("POST", "/v1/interpolate", {"json": {"latents": [good] * 7, "steps": 3}}),
        "too_many_steps": lambda: ("POST", "/v1/interpolate", {"json": {"latents": [good, good], "steps": 10**9}}),
        "zero_latent": lambda: ("POST", "/v1/decode", {"json": {"latents": [[0.0] * latent_size]}}),
        "oversized_body": lambda: ("POST", "/v1/reconstruct", {"files": {"image": ("e.jpg", b"\xff" * (9 << 20))}}),
        "image_as_text_field": lambda: ("POST", "/v1/reconstruct", {"files": {"x": ("f", b"")}, "data": {"image": "not a file"}}),
        "vector_and_attributes": lambda: ("POST", "/v1/edit", {"files": {"image": ("a", jpeg)}, "data": {"attributes": "{}", "vector": "[1]"}}),
        "strings_for_numbers": lambda: ("POST", "/v1/decode", {"json": {"latents": [["a"] * latent_size]}}),
        "wrong_method": lambda: ("GET", "/v1/sample", {}),
        "unknown_path": lambda: ("GET", f"/v1/nothing{rng.randrange(100)}", {}),
        "bad_example_name": lambda: ("GET", "/v1/examples/..%2F..%2Fetc%2Fpasswd", {}),
    }  # fmt: skip
    names = sorted(kinds)
    while True:
        kind = rng.choice(names)
        yield (kind, *kinds[kind]())


def test_a_thousand_malformed_requests_get_4xx_and_the_service_stays_up(service):
    base, model = service
    requests_made = _bad_requests(model.latent_size, random.Random(0))
    batch, heavy = [], 0
    while len(batch) < 1100:
        item = next(requests_made)
        heavy += item[0] == "oversized_body"
        if item[0] != "oversized_body" or heavy <= 20:  # 9 MB bodies cost the most
            batch.append(item)

    def send(item):
        kind, method, path, kwargs = item
        return kind, requests.request(method, base + path, timeout=60, **kwargs)

    statuses: dict[str, set[int]] = {}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for kind, response in pool.map(send, batch):
            statuses.setdefault(kind, set()).add(response.status_code)
            assert response.status_code < 500, (kind, response.status_code, response.text[:300])
            if response.status_code != 404 or kind != "unknown_path":
                assert "error" in response.json() or "detail" in response.json(), kind
    assert len(batch) >= 1000 and len(statuses) >= 15
    assert statuses["png_bomb"] == {413} and statuses["text_as_image"] == {415}
    assert statuses["oversized_body"] == {413} and statuses["unknown_attribute"] == {404}
    assert statuses["nan_latents"] == {422} and statuses["strength_out_of_range"] == {422}
    unknown = requests.post(
        f"{base}/v1/edit", files={"image": ("a", face(0))}, data={"attributes": '{"Wings": 1}'}
    ).json()
    assert "Smiling" in unknown["known"]
    assert requests.get(f"{base}/healthz").json() == {"status": "ok"}
    assert requests.post(f"{base}/v1/sample", json={"n": 2}).status_code == 200


def test_concurrent_requests_share_a_forward_pass(service):
    from ray import serve

    base, _ = service
    decoder = serve.get_deployment_handle("Decoder", app_name="pioneer")
    decoder.stats.remote().result()  # reset
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        codes = list(
            pool.map(
                lambda i: requests.post(f"{base}/v1/sample", json={"n": 1, "seed": i}).status_code,
                range(32),
            )
        )
    assert codes == [200] * 32
    stats = decoder.stats.remote().result()
    assert stats["images"] == 32 and stats["batches"] < 32 and stats["largest"] > 1
    assert stats["omp_wait_policy"] == "PASSIVE"  # MODEL_ACTOR_OPTIONS reached the replica


def test_the_health_check_fails_when_the_model_cannot_run(served_run):
    from serve.app import Decoder

    replica = Decoder.func_or_class({"checkpoint": str(served_run)})
    replica.check_health()
    with torch.no_grad():
        for parameter in replica.model.decoder.parameters():
            parameter.fill_(float("nan"))
    with pytest.raises(RuntimeError, match="non-finite"):
        replica.check_health()


def test_served_passes_stand_for_the_health_probe_until_one_fails(served_run, monkeypatch):
    from serve.app import Decoder

    replica = Decoder.func_or_class({"checkpoint": str(served_run)})
    passes = []
    real = replica.forward_pass
    monkeypatch.setattr(replica, "forward_pass", lambda z: passes.append(len(z)) or real(z))
    z = sample_latents(3, replica.model.latent_size, torch.Generator().manual_seed(0))
    replica.check_health()
    assert passes == [1]  # no traffic yet: the probe runs
    images = replica.served_pass(z)
    assert images.dtype == torch.uint8 and images.shape[0] == 3 and passes == [1, 3]
    replica.check_health()
    assert passes == [1, 3]  # a served pass just succeeded: no probe
    with torch.no_grad():
        for parameter in replica.model.decoder.parameters():
            parameter.fill_(float("nan"))
    replica.served_pass(z)  # non-finite output: no longer proof of health
    with pytest.raises(RuntimeError, match="non-finite"):
        replica.check_health()
    assert passes == [1, 3, 3, 1]


def test_overload_answers_503_at_once_instead_of_queueing(service, served_run):
    """A decoder that takes one request and queues one: a burst gets 503s with Retry-After."""
    from ray import serve

    from serve.app import Decoder, Encoder, build_service
    from serve.options import ServeOptions

    base, _ = service
    args = ServeOptions(checkpoint=str(served_run)).to_args()
    free = {"ray_actor_options": {"num_cpus": 0}}  # the first app holds both CPUs
    tight = Decoder.options(max_ongoing_requests=1, max_queued_requests=1, **free)
    app = build_service(ServeOptions.from_args(args)).bind(
        Encoder.options(**free).bind(args), tight.bind(args), args
    )
    serve.run(app, name="tight", route_prefix="/tight")
    try:
        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            answers = list(
                pool.map(
                    lambda i: requests.post(f"{base}/tight/v1/sample", json={"n": 64}, timeout=60),
                    range(48),
                )
            )
    finally:
        serve.delete("tight")
    codes = [a.status_code for a in answers]
    assert set(codes) == {200, 503} and codes.count(503) > 0, codes
    refused = next(a for a in answers if a.status_code == 503)
    assert "overloaded" in refused.json()["error"] and refused.headers["retry-after"] == "1"


PIXELS = """
const img = document.getElementById(arguments[0]);
const canvas = document.createElement("canvas");
canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
canvas.getContext("2d").drawImage(img, 0, 0);
return canvas.toDataURL("image/png");
"""


def chromium():
    """Debian's headless chromium through its chromedriver (.ci/run installs both)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert browser and driver, "install chromium and chromium-driver (apt), as .ci/run does"
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def test_the_web_page_edits_an_uploaded_face_as_a_slider_moves(service):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    base, _ = service
    browser = chromium()
    wait = WebDriverWait(browser, 60)
    try:
        browser.get(f"{base}/")
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#sliders input")) == 3)
        assert "images seen" in browser.find_element(By.ID, "model").text
        browser.find_element(By.ID, "upload").send_keys(str(FACES[0]))
        edited = browser.find_element(By.ID, "edited")
        wait.until(lambda b: edited.get_attribute("data-version") != "0")
        assert browser.find_element(By.ID, "reconstruction").get_attribute("data-ready") == "1"
        before_version = edited.get_attribute("data-version")
        before = browser.execute_script(PIXELS, "edited")

        smiling = browser.find_element(By.CSS_SELECTOR, '#sliders input[data-name="Smiling"]')
        smiling.send_keys(*[Keys.ARROW_RIGHT] * 15)  # a user pressing -> on the slider: +1.5
        wait.until(lambda b: edited.get_attribute("data-version") != before_version)
        assert float(smiling.get_attribute("value")) == pytest.approx(1.5)
        assert browser.execute_script(PIXELS, "edited") != before
        assert browser.find_element(By.ID, "status").text == ""

        gallery = browser.find_elements(By.CSS_SELECTOR, "#gallery img")
        assert len(gallery) == 12
        gallery[0].click()
        wait.until(lambda b: "chosen" in gallery[0].get_attribute("class"))
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(browser).key_down(Keys.SHIFT).click(gallery[1]).key_up(Keys.SHIFT).perform()
        wait.until(lambda b: "second" in gallery[1].get_attribute("class"))
        browser.find_element(By.ID, "interpolate").click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#strip img"))
        browser.find_element(By.ID, "random").click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#samples img"))
        strip = browser.find_element(By.CSS_SELECTOR, "#strip img")
        width = browser.execute_script("return arguments[0].naturalWidth", strip)
        assert width == 8 * 64 + 9 * 2  # 8 steps of 64 px tiles
        assert browser.find_element(By.ID, "status").text == ""
    finally:
        browser.quit()
