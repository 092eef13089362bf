"""Audio decoding from real container files, windows, and log-mel parity with transformers."""
import jax.numpy as jnp
import numpy as np
import pytest

from omni_jax.data.audio import (
    WINDOW_SAMPLES,
    AudioError,
    load_audio,
    load_audio_features,
    log_mel_spectrogram,
    log_mel_spectrogram_jax,
    split_windows,
)
from tests import media
from tests.media import tone, write_audio, write_video


def _dominant_hz(waveform, rate=16000):
    spectrum = np.abs(np.fft.rfft(waveform))
    return np.argmax(spectrum) * rate / waveform.size


def _speech_like(seconds=12.0, seed=0):
    """A chirp with harmonics and noise: not a pure tone, so every mel bin matters."""
    rng = np.random.RandomState(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    chirp = sum(0.2 / k * np.sin(2 * np.pi * k * 220 * t * (1 + 0.05 * t)) for k in range(1, 6))
    return (chirp * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.05 * rng.randn(t.size)).astype(np.float32)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_equals_whisper_feature_extractor(n_mels):
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=n_mels)
    clips = [_speech_like(12.0, 0), _speech_like(35.0, 1)]  # shorter and longer than the window
    ref = extractor(clips, sampling_rate=16000, return_tensors="np").input_features
    ours = log_mel_spectrogram(np.stack([np.pad(c, (0, 40 * 16000 - c.size)) for c in clips]), n_mels)
    assert ours.shape == ref.shape == (2, n_mels, 3000)
    assert np.abs(ours - ref).max() < 1e-4
    # and its float64 NumPy path (what it computes without torch)
    windows = np.stack([np.pad(c[:WINDOW_SAMPLES], (0, max(0, WINDOW_SAMPLES - c.size))) for c in clips])
    assert np.abs(ours - extractor._np_extract_fbank_features(windows, "cpu")).max() < 1e-4
    np.testing.assert_array_equal(log_mel_spectrogram(clips[0], n_mels), ours[0])
    on_device = np.asarray(log_mel_spectrogram_jax(jnp.asarray(windows), n_mels))
    assert np.abs(on_device - ref).max() < 1e-4


@pytest.mark.parametrize("name,rate,channels,codec", [
    ("stereo.m4a", 44100, 2, "aac"), ("stereo.mp4", 44100, 2, "aac"), ("mono48k.wav", 48000, 1, "pcm_s16le"),
    ("mono.flac", 22050, 1, "flac"), ("mono8k.wav", 8000, 1, "pcm_s16le"), ("mono8k.m4a", 8000, 1, "aac"),
    ("surround.m4a", 48000, 6, "aac"), ("voice.opus", 48000, 1, "libopus")])
def test_decodes_containers_to_16k_mono(tmp_path, name, rate, channels, codec):
    path = write_audio(tmp_path / name, tone(1000.0, 2.0, rate, channels), rate, codec)
    waveform = load_audio(path)
    assert waveform.dtype == np.float32 and waveform.ndim == 1
    assert abs(waveform.size / 16000 - 2.0) < 0.08  # AAC adds < 1024 samples of padding (0.128 s at 8 kHz)
    assert abs(_dominant_hz(waveform) - 1000.0) < 2.0


def test_audio_track_of_a_video(tmp_path):
    path = write_video(tmp_path / "clip.mp4", seconds=1.5, audio=tone(440.0, 1.5, 44100, 2))
    waveform = load_audio(path)
    assert abs(waveform.size / 16000 - 1.5) < 0.05
    assert abs(_dominant_hz(waveform) - 440.0) < 2.0
    features = load_audio_features(path, n_mels=80)
    assert features.present and features.windows == 1 and features.features.shape == (1, 80, 3000)


def test_video_without_audio_is_absent_not_an_error(tmp_path):
    path = write_video(tmp_path / "silent.mp4")
    assert load_audio(path) is None
    features = load_audio_features(path, n_mels=128, max_windows=2)
    assert not features.present and features.windows == 0
    assert features.features.shape == (2, 128, 3000) and not features.features.any()


def test_unreadable_files_raise_a_named_error(tmp_path):
    corrupt = tmp_path / "corrupt.m4a"
    corrupt.write_bytes(np.random.RandomState(0).bytes(5000))
    with pytest.raises(AudioError, match="corrupt.m4a: unreadable audio"):
        load_audio(corrupt)
    with pytest.raises(AudioError, match="missing.wav: no such file"):
        load_audio(tmp_path / "missing.wav")


def test_damaged_packets_are_skipped_and_the_rest_kept(tmp_path):
    whole = write_audio(tmp_path / "tone.m4a", tone(440.0, 3.0, 16000), 16000)
    damaged = media.write_damaged_packets(tmp_path / "damaged.m4a", whole, packets=(10, 11, 12))
    clean, kept = load_audio(whole), load_audio(damaged)
    assert clean.size - 3 * 1024 - 100 <= kept.size < clean.size  # three AAC frames of 1024 samples gone
    assert abs(_dominant_hz(kept) - 440.0) < 2.0
    features = load_audio_features(damaged, n_mels=80)
    assert features.present and features.damaged and not load_audio_features(whole, n_mels=80).damaged
    hopeless = media.write_damaged_packets(tmp_path / "hopeless.m4a", whole, packets=range(1000))
    with pytest.raises(AudioError, match="none of its .* audio packets decodes") as error:
        load_audio(hopeless)
    assert error.value.reason == "unreadable_audio"


def test_a_track_without_samples_is_absent_and_an_empty_file_named(tmp_path):
    features = load_audio_features(media.write_silent_track(tmp_path / "silent.wav"), n_mels=80)
    assert not features.present and features.empty and not features.features.any()
    with pytest.raises(AudioError, match="empty.m4a: an empty file") as error:
        load_audio(media.write_empty(tmp_path / "empty.m4a"))
    assert error.value.reason == "empty_file"


def test_long_clips_take_the_first_window_or_several():
    waveform = np.arange(65 * 16000, dtype=np.float32)
    first, used = split_windows(waveform, 1)
    assert first.shape == (1, WINDOW_SAMPLES) and used == 1
    np.testing.assert_array_equal(first[0], waveform[:WINDOW_SAMPLES])
    several, used = split_windows(waveform, 4)
    assert several.shape == (4, WINDOW_SAMPLES) and used == 3
    np.testing.assert_array_equal(several.reshape(-1)[:waveform.size], waveform)
    assert not several[2, 5 * 16000:].any() and not several[3].any()
