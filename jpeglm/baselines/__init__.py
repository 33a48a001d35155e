"""Fitting the baselines' codecs: the VQ/LFQ autoencoder (vq_train.py) and the pixel palette
(pixel_fit.py). The codecs themselves are jpeglm/codecs/vq.py and jpeglm/codecs/pixel.py."""
