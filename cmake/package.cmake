# install() rules and the .deb (`make package`: shardtune_<version>_amd64.deb in the build
# directory). Layout under the prefix (/usr in the package): the three executables in bin/, the
# API's .proto files, the example configs and job specs and the Slurm template in
# share/shardtune/, the documentation in share/doc/shardtune/. Outside it: the server's config
# /etc/shardtune/server.yaml (a conffile, from examples/server.yaml) and the systemd unit.
# deploy/debian/ holds the maintainer scripts (the shardtune user, /var/lib/shardtune).
include(GNUInstallDirs)

install(TARGETS shardtune shardtune-worker shardtune-server RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY proto/shardtune proto/google DESTINATION ${CMAKE_INSTALL_DATADIR}/shardtune/proto FILES_MATCHING PATTERN "*.proto")
install(DIRECTORY examples/ DESTINATION ${CMAKE_INSTALL_DATADIR}/shardtune/examples)
install(FILES deploy/slurm/job.sbatch.in DESTINATION ${CMAKE_INSTALL_DATADIR}/shardtune/deploy/slurm)
install(FILES README.md DESTINATION ${CMAKE_INSTALL_DOCDIR})
install(DIRECTORY docs DESTINATION ${CMAKE_INSTALL_DOCDIR})
# Absolute: where Debian keeps them whatever the prefix (the .deb is the place these are for).
install(FILES examples/server.yaml DESTINATION /etc/shardtune)
install(FILES deploy/systemd/shardtune-server.service DESTINATION /lib/systemd/system)

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME shardtune)
set(CPACK_PACKAGE_VERSION ${SHARDTUNE_VERSION_STRING})
set(CPACK_PACKAGE_CONTACT "shardtune maintainers <shardtune@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "fine-tuning service for Hugging Face language models (ZeRO sharding, LoRA)")
set(CPACK_PACKAGE_DESCRIPTION "shardtune fine-tunes Hugging Face language models on one or many ranks (ZeRO \
stages 0-3, PEFT methods), from the shardtune command line or as a service: shardtune-server accepts jobs over gRPC \
and runs them locally or on Slurm.")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)  # shardtune_<version>_amd64.deb
set(CPACK_DEBIAN_PACKAGE_SECTION science)
set(CPACK_DEBIAN_PACKAGE_HOMEPAGE "https://github.com/shardtune/shardtune")
# Depends: the packages of the shared libraries the executables link (dpkg-shlibdeps), plus
# what they run: mpirun (jobs' ranks) and useradd (postinst). CUDA and NCCL, where this build
# links them, come from NVIDIA's installers rather than Debian: dpkg-shlibdeps is told they are
# private (no Depends), and the executables keep their directory in RUNPATH.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "openmpi-bin, passwd")
if(SHARDTUNE_WITH_NCCL)
  get_filename_component(nccl_dir "${NCCL_LIBRARY}" DIRECTORY)
  get_filename_component(cudart_dir "${CUDA_CUDART}" DIRECTORY)
  set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS_PRIVATE_DIRS ${nccl_dir} ${cudart_dir})
endif()
# /etc/shardtune/server.yaml is a conffile: dpkg keeps the operator's edits on upgrade and asks.
file(WRITE ${PROJECT_BINARY_DIR}/deb/conffiles "/etc/shardtune/server.yaml\n")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA ${PROJECT_SOURCE_DIR}/deploy/debian/postinst
    ${PROJECT_SOURCE_DIR}/deploy/debian/prerm ${PROJECT_SOURCE_DIR}/deploy/debian/postrm
    ${PROJECT_BINARY_DIR}/deb/conffiles)
set(CPACK_STRIP_FILES ON)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
include(CPack)
