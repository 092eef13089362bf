"""Face tracks for real footage: the RetinaFace detector over frames (`detector`), tracks and the
principal face per clip (`data.tracks`), and the `omni-jax faces` job that writes them into a
manifest (`job`), with contact sheets to look at (`preview`)."""
