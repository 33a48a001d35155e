"""Codecs: media <-> symbols. See base.py for the contract every codec keeps."""

from jpeglm.codecs.base import CODECS, Codec, DecodeReport, codec_class, codec_from_config

__all__ = ["CODECS", "Codec", "DecodeReport", "codec_class", "codec_from_config"]
