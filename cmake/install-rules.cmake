include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(coropool_config_dir "${CMAKE_INSTALL_DATADIR}/coropool/cmake")

install(DIRECTORY include/ DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}" COMPONENT coropool_Development)
install(TARGETS coropool EXPORT coropoolTargets INCLUDES DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}")
install(EXPORT coropoolTargets NAMESPACE coropool:: DESTINATION "${coropool_config_dir}"
        COMPONENT coropool_Development)

configure_package_config_file(cmake/coropoolConfig.cmake.in "${PROJECT_BINARY_DIR}/coropoolConfig.cmake"
                              INSTALL_DESTINATION "${coropool_config_dir}")
write_basic_package_version_file("${PROJECT_BINARY_DIR}/coropoolConfigVersion.cmake"
                                 COMPATIBILITY SameMajorVersion ARCH_INDEPENDENT)
install(FILES "${PROJECT_BINARY_DIR}/coropoolConfig.cmake" "${PROJECT_BINARY_DIR}/coropoolConfigVersion.cmake"
        DESTINATION "${coropool_config_dir}" COMPONENT coropool_Development)
