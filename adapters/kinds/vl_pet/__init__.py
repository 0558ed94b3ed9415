"""VL-PET (Hu et al., ICCV 2023): modules whose modification is scaled by a
granularity-controlled matrix G, as four kinds: vl-pet-large (G is N x d),
vl-pet-middle-x (N x 1), vl-pet-middle-y (1 x d), vl-pet-small (1 x 1).

    config.py  VlPetConfig: granularity, targets, ranks
    layer.py   the encoder module, G, the decoder's value adapter; the routing group
    model.py   VlPetAdapter (the trainable tensors, zero delta at init) and the kinds

Placement, from the authors' BART/T5 scripts onto BLIP. There, the encoder reads
image features and text together and the decoder generates; VL-PET gives the
encoder "lightweight modules that strengthen VL alignment" and the decoder modules
that "keep text generation intact". Their encoder module sits on every attention and
feed-forward branch: y1 = y + Δ(y) (Δ: down d->r, gelu, up r->d), gated by G from the
branch input x1 and y1, before the residual add; the decoder gets only a parallel
adapter on the value projection of its encoder-attention, no gate, leaving its
self-attention and feed-forward untouched.

On BLIP the encoders are the ViT (image side) and the text encoder run as the fusion
network (text self-attention, cross-attention to image tokens: where VL alignment
happens); the decoder is the text decoder. So:

    ViT layer, attention and MLP branches         encoder module   target "vision"
    text encoder, self-attention and FFN branches encoder module   target "text"
    text encoder, cross-attention branch          encoder module   target "cross"
    text decoder, cross-attention value (q/k/v: v) parallel adapter target "decoder_cross"

BLIP's text layers are post-LN like BART's (LN(x1 + y)), so G ⊙ y1 goes where BART
has it. The ViT is pre-LN (x + branch(LN(x))): there x1 is the branch's normalised
input LN(x), the input the branch itself reads, and G ⊙ y1 is added to the residual
stream. Not carried over: the authors also unfreeze the encoder LayerNorms (the
backbone here stays frozen and shared by every row of a batch), and their per-task
prompts (one adapter serves one task here).
"""
