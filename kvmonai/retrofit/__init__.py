"""``kvmonai retrofit``: start a KV bundle from a trained QKV model of the same architecture and fine-tune it
(:mod:`kvmonai.retrofit.retrofit`)."""

from kvmonai.retrofit.retrofit import RetrofitError, bundle_settings, convert_qkv_model, measure_retrofit, train_bundle

__all__ = ["RetrofitError", "bundle_settings", "convert_qkv_model", "measure_retrofit", "train_bundle"]
