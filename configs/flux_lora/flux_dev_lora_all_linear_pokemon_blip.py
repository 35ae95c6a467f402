_base_ = "flux_dev_lora_pokemon_blip.py"
# Every linear layer of the blocks, the set kohya's sd-scripts trains on
# FLUX.1 (networks/lora_flux.py): the attention projections, both streams'
# feed-forward layers and modulations in the double-stream blocks, and the
# single-stream blocks' q, k, v, MLP input (proj_mlp), output (proj_out)
# and modulation (norm.linear). Not the embedders, and not the final
# layer's proj_out and norm_out.linear: a regex, since a bare "proj_out"
# names the final layer too. 5,369,856 × rank parameters on FLUX.1-dev
# (rank 16: 85,917,696), against the attention set's 1,634,304 × rank.
model = dict(transformer_lora_config=dict(target_modules=(
    r"transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj"
    r"|add_k_proj|add_v_proj|to_add_out)|ff\.net\.(0\.proj|2)"
    r"|ff_context\.net\.(0\.proj|2)|norm1\.linear|norm1_context\.linear)"
    r"|single_transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v)|proj_mlp"
    r"|proj_out|norm\.linear)")))
