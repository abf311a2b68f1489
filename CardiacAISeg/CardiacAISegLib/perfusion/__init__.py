"""Perfusion quantification: the blood pools and AIF from the bolus (``bolus``), breathing
correction (``motion``), Fermi-constrained MBF and MPR (``mbf``) with its 2CXM cross-check
(``mbf_2cxm``), semi-quantitative indices (``semiquant``) and the automatic myocardial ring
(``roi``). docs/algorithms.md §5."""
